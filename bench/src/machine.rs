//! What the figures were measured on: machine, date, commit, limits.

use std::path::Path;
use std::process::Command;

pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub loadavg: String,
    pub date: String,
    pub commit: String,
    pub rustc: String,
    pub nofile: u64,
}

impl Machine {
    pub fn probe(root: &Path, nofile: u64) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".into(), |(_, m)| m.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let loadavg = read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let mut commit = output(root, "git", &["rev-parse", "--short=12", "HEAD"]);
        if !output(
            root,
            "git",
            &["status", "--porcelain", "--untracked-files=no"],
        )
        .is_empty()
        {
            commit.push_str(" (with uncommitted changes)");
        }
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_gib: mem_kb / 1024.0 / 1024.0,
            kernel: read("/proc/sys/kernel/osrelease"),
            loadavg,
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            commit,
            rustc: output(root, "rustc", &["--version"]),
            nofile,
        }
    }
}

fn output(dir: &Path, cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
