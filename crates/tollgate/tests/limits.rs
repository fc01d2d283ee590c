//! What `tollgate serve` asks of the operating system at start.

mod common;

use common::*;

/// The soft and hard "Max open files" of a process, from `/proc/PID/limits`.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let figure = |w: &str| match w {
        "unlimited" => Some(u64::MAX),
        w => w.parse().ok(),
    };
    let figures: Vec<u64> = line.split_whitespace().filter_map(figure).collect();
    (figures[0], figures[1])
}

#[test]
fn serve_raises_a_low_soft_open_file_limit_to_the_hard_one() {
    let db = TestDb::sqlite();
    let server = Server::start_after("ulimit -S -n 256", &db.url);
    let (soft, hard) = open_file_limits(server.child.id());
    assert!(
        hard > 256,
        "this machine's hard limit ({hard}) leaves nothing to raise"
    );
    // Two descriptors per stream: at 256 the server would turn streams away before 128.
    assert_eq!(soft, hard, "the soft limit was left at {soft}");
}
