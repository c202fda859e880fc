//! Link the `signet` binary with packed relative relocations (DT_RELR) when
//! the toolchain and C library support them.
//!
//! A position-independent executable of this size carries ~2 MiB of
//! relative relocations (`.rela.dyn`), which the dynamic loader reads at
//! every start and which then stay in the process' resident set. Packed,
//! they take a few KiB. GNU ld >= 2.38 and lld support `-z
//! pack-relative-relocs`; glibc >= 2.36 loads them (the linker falls back to
//! plain relocations when the C library lacks `GLIBC_ABI_DT_RELR`). The
//! option is probed with a test link, so older toolchains build as before.
//! Set `SIGNET_NO_RELR=1` to build a binary for an older C library.

use std::io::Write as _;
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SIGNET_NO_RELR");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if std::env::var_os("SIGNET_NO_RELR").is_some()
        || target != host
        || !target.contains("linux-gnu")
    {
        return;
    }
    if links_with_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the C compiler driver (the default linker) accepts the option.
fn links_with_relr() -> bool {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default())
        .join("relr-probe");
    let Ok(mut cc) = Command::new("cc")
        .args(["-x", "c", "-", "-o"])
        .arg(&out)
        .arg("-Wl,-z,pack-relative-relocs")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let wrote = cc
        .stdin
        .take()
        .is_some_and(|mut stdin| stdin.write_all(b"int main(void) { return 0; }\n").is_ok());
    let linked = cc.wait().is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&out);
    wrote && linked
}
