//! What a process uses, as /proc reports it: CPU time, and memory the way
//! a cgroup counts it (private pages, PSS) beside RSS. For benches.

/// CPU time a process has used, user and system, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: utime and stime are the
    // 12th and 13th, in clock ticks (USER_HZ, 100 on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// A process's memory in KiB, from `/proc/PID/smaps_rollup`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mem {
    pub rss: u64,
    /// Proportional set size: shared pages divided among their mappers.
    pub pss: u64,
    /// Pages no other process maps (clean and dirty).
    pub private: u64,
    /// Anonymous pages (heap, stacks, relocated data).
    pub anonymous: u64,
}

pub fn mem_kib(pid: u32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss: field("Rss:"),
        pss: field("Pss:"),
        private: field("Private_Clean:") + field("Private_Dirty:"),
        anonymous: field("Anonymous:"),
    }
}

impl std::fmt::Display for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |kib: u64| kib as f64 / 1024.0;
        write!(
            f,
            "anonymous {:.1}, private {:.1}, PSS {:.1}, RSS {:.1}",
            mib(self.anonymous),
            mib(self.private),
            mib(self.pss),
            mib(self.rss)
        )
    }
}

/// The mean of several processes' memory.
pub fn mean(mems: &[Mem]) -> Mem {
    let n = mems.len().max(1) as u64;
    let sum = |f: fn(&Mem) -> u64| mems.iter().map(f).sum::<u64>() / n;
    Mem {
        rss: sum(|m| m.rss),
        pss: sum(|m| m.pss),
        private: sum(|m| m.private),
        anonymous: sum(|m| m.anonymous),
    }
}
