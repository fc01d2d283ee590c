//! CPU time and resident memory of a process, read from /proc.

use std::time::Instant;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    pub at: Instant,
    /// utime + stime, in seconds.
    pub cpu_secs: f64,
    pub rss_kb: u64,
    /// Peak resident set so far (VmHWM).
    pub hwm_kb: u64,
}

/// Reads process `pid` and its direct children (a server's worker processes, as nginx's),
/// adding up their CPU time and memory; `None` when `pid` is gone or /proc is unreadable.
pub fn snapshot(pid: u32) -> Option<Snapshot> {
    let mut total = one(pid)?;
    for child in children(pid) {
        if let Some(c) = one(child) {
            total.cpu_secs += c.cpu_secs;
            total.rss_kb += c.rss_kb;
            total.hwm_kb += c.hwm_kb;
        }
    }
    Some(total)
}

/// The processes `pid` started that are still running, whichever of its threads started them.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Reads process `pid` alone.
fn one(pid: u32) -> Option<Snapshot> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces:
    // state is field 3, utime 14 and stime 15 (1-based).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Snapshot {
        at: Instant::now(),
        cpu_secs: ticks as f64 / clock_ticks() as f64,
        rss_kb: status_kb(&status, "VmRSS:").unwrap_or(0),
        hwm_kb: status_kb(&status, "VmHWM:").unwrap_or(0),
    })
}

fn status_kb(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 when that cannot be asked.
pub fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// What a process used between two readings.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_secs: f64,
    pub wall_secs: f64,
    /// Resident set before the load began (set by the caller), at the end, and the peak
    /// so far, in MB.
    pub rss_before_mb: f64,
    pub rss_mb: f64,
    pub hwm_mb: f64,
}

impl Usage {
    pub fn between(a: &Snapshot, b: &Snapshot) -> Self {
        Self {
            cpu_secs: (b.cpu_secs - a.cpu_secs).max(0.0),
            wall_secs: b.at.duration_since(a.at).as_secs_f64(),
            rss_before_mb: f64::NAN,
            rss_mb: b.rss_kb as f64 / 1024.0,
            hwm_mb: b.hwm_kb as f64 / 1024.0,
        }
    }

    /// CPU microseconds per request.
    pub fn us_per(&self, requests: u64) -> f64 {
        if requests == 0 {
            return 0.0;
        }
        self.cpu_secs * 1e6 / requests as f64
    }

    /// Share of one core used, in percent.
    pub fn cpu_percent(&self) -> f64 {
        if self.wall_secs <= 0.0 {
            return 0.0;
        }
        100.0 * self.cpu_secs / self.wall_secs
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let s = super::snapshot(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb);
    }

    #[test]
    fn children_are_added() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let me = std::process::id();
        let alone = super::one(me).expect("own /proc entry");
        let with = super::snapshot(me).expect("own /proc entry");
        let theirs = super::one(child.id()).expect("child's /proc entry");
        let _ = child.kill();
        let _ = child.wait();
        assert!(theirs.rss_kb > 0);
        // Our own resident set may move between the readings; the child's is well over that.
        assert!(
            with.rss_kb >= alone.rss_kb + theirs.rss_kb / 2,
            "{with:?} {alone:?} {theirs:?}"
        );
    }
}
