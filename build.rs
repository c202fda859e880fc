//! Link the `signet` binary with packed relative relocations (DT_RELR) when
//! the toolchain and C library support them.
//!
//! A position-independent executable of this size carries ~2 MiB of
//! relative relocations (`.rela.dyn`), which the dynamic loader reads at
//! every start and which then stay in the process' resident set. Packed,
//! they take a few KiB. GNU ld >= 2.38 and lld support `-z
//! pack-relative-relocs`; glibc >= 2.36 loads them (the linker falls back to
//! plain relocations when the C library lacks `GLIBC_ABI_DT_RELR`). The
//! option is probed with a test link through rustc, so older toolchains
//! build as before.
//! Set `SIGNET_NO_RELR=1` to build a binary for an older C library.
//!
//! It also lays out the code a sidecar runs together at the front of the
//! text segment, when the linker is lld (Rust's default on x86_64 Linux):
//! `build/symbol-order.txt`, written by `bench/symbol-order.sh`, lists those
//! functions. The kernel maps each page fault of a file-backed mapping with
//! its neighbours (fault-around, 64 KiB), so code spread over 30 MB made
//! every sidecar map ~13 MiB of it; packed, a sidecar maps about what it
//! runs. Names the linker does not find are skipped. Set
//! `SIGNET_NO_SYMBOL_ORDER=1` to link in the compiler's order.

use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SIGNET_NO_RELR");
    println!("cargo:rerun-if-env-changed=SIGNET_NO_SYMBOL_ORDER");
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host || !target.contains("linux-gnu") {
        return;
    }
    if std::env::var_os("SIGNET_NO_RELR").is_none()
        && rustc_links_with("-Wl,-z,pack-relative-relocs")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let order = std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join(ORDER_FILE);
    if std::env::var_os("SIGNET_NO_SYMBOL_ORDER").is_none()
        && order.is_file()
        && rustc_links_with(&format!("-Wl,--symbol-ordering-file={}", order.display()))
    {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// The functions a sidecar runs, in the order to lay them out.
const ORDER_FILE: &str = "build/symbol-order.txt";

/// Whether rustc's own link step (lld by default, else the C compiler's
/// linker) accepts `arg`: a probe program is linked with it.
fn rustc_links_with(arg: &str) -> bool {
    let Some(out_dir) = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from) else {
        return false;
    };
    let src = out_dir.join("link-probe.rs");
    if std::fs::write(&src, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = out_dir.join("link-probe");
    let linked = Command::new(rustc)
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .arg("-C")
        .arg(format!("link-arg={arg}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&out);
    linked
}
