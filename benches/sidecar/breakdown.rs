//! `SIGNET_BENCH_ONLY=breakdown`: where the cost of a keep-alive 1 KiB
//! request, and of a new mTLS connection, goes in each proxy. Two passes
//! per contender under the same load: one with `perf stat` counting each
//! proxy's system calls and context switches and `/proc` its CPU time
//! (divided by the units served), one with `perf record` sampling where
//! the CPU time goes, summed into buckets by symbol and library. Needs
//! `perf`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// CPU buckets, first match wins: (bucket, patterns in the symbol or DSO).
/// The kernel comes first: its own allocators and copies (`kmalloc`,
/// `kmem_cache_free`, `copy_user_...`) are kernel time, not ours.
const BUCKETS: &[(&str, &[&str])] = &[
    ("kernel: TCP, loopback, syscalls", &["[kernel", "[k]"]),
    (
        "crypto (key exchange, signatures, AEAD, hashes)",
        &[
            "aes",
            "gcm",
            "ghash",
            "gfmul",
            "sha",
            "chacha",
            "poly1305",
            "aws_lc",
            "bssl",
            "ecp_",
            "p256",
            "p384",
            "x25519",
            "curve25519",
            "ecdsa",
            "bn_",
            "BN_",
        ],
    ),
    (
        "authorization (policy)",
        &["regorus", "signet_policy", "rbac", "RBAC"],
    ),
    (
        "TLS records and state",
        &["rustls", "ssl_", "SSL_", "tls", "Tls"],
    ),
    ("copies", &["memcpy", "memmove", "memset"]),
    (
        "allocator",
        &["malloc", "free", "realloc", "calloc", "tcmalloc", "je_"],
    ),
    (
        "event loop and scheduling",
        &[
            "tokio",
            "mio",
            "libevent",
            "event_",
            "Event::",
            "Dispatcher",
            "futex",
            "parking",
        ],
    ),
    (
        "relay / filters",
        &[
            "signet_proxy",
            "relay",
            "Network::",
            "TcpProxy",
            "Filter",
            "Buffer",
        ],
    ),
];

pub struct Counts {
    pub cpu_user_us: f64,
    pub cpu_sys_us: f64,
    pub syscalls: f64,
    pub context_switches: f64,
}

/// `perf stat` counting what [`counts`] reads.
pub const STAT: &[&str] = &[
    "stat",
    "-x,",
    "-e",
    "raw_syscalls:sys_enter,context-switches",
];

/// `perf record` sampling what [`buckets`] sums.
pub const RECORD: &[&str] = &["record", "-F", "997"];

/// `perf` with `command` ([`STAT`] or [`RECORD`]) on `pid` for `secs`
/// seconds, started now, writing `out`.
pub fn start(command: &[&str], pid: u32, secs: u64, out: &Path) -> Child {
    Command::new("perf")
        .args(command)
        .args(["-p", &pid.to_string(), "-o"])
        .arg(out)
        .args(["--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("perf {} (install perf): {e}", command[0]))
}

/// utime and stime of `pid` and its threads, in seconds.
pub fn user_sys(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let mut fields = after.split_whitespace().skip(11);
    let mut next = || {
        fields
            .next()
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (next(), next())
}

/// The counts `perf stat` wrote to `file`, with the CPU time measured
/// around it, per request.
pub fn counts(file: &Path, user: f64, sys: f64, requests: f64) -> Counts {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let value = |event: &str| {
        text.lines()
            .find(|l| l.contains(event))
            .and_then(|l| l.split(',').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Counts {
        cpu_user_us: user * 1e6 / requests,
        cpu_sys_us: sys * 1e6 / requests,
        syscalls: value("raw_syscalls:sys_enter") / requests,
        context_switches: value("context-switches") / requests,
    }
}

/// The CPU share of each bucket in the profile `file`, in percent.
pub fn buckets(file: &Path) -> BTreeMap<&'static str, f64> {
    let out = Command::new("perf")
        .args([
            "report",
            "--no-children",
            "--sort",
            "dso,sym",
            "--stdio",
            "-i",
        ])
        .arg(file)
        .output()
        .expect("perf report");
    let mut shares: BTreeMap<&'static str, f64> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((pct, rest)) = line.split_once('%') else {
            continue;
        };
        let Ok(pct) = pct.trim().parse::<f64>() else {
            continue;
        };
        let bucket = BUCKETS
            .iter()
            .find(|(_, pats)| pats.iter().any(|p| rest.contains(p)))
            .map_or("other", |(name, _)| *name);
        *shares.entry(bucket).or_default() += pct;
    }
    shares
}

/// The bucket names in table order.
pub fn bucket_names() -> Vec<&'static str> {
    BUCKETS
        .iter()
        .map(|(name, _)| *name)
        .chain(["other"])
        .collect()
}
