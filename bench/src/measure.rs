//! One phase measured: the load run while the mock's and tollgate's /proc figures are read.

use crate::client::{Conn, Target};
use crate::load::{closed, open, slow, Mark};
use crate::procs::Proc;
use crate::procstat::{self, Snapshot, Usage};
use crate::results::{Measured, Side};
use crate::scenarios::{Load, Phase};
use std::time::Duration;

/// One request, which must succeed; its error says what the server answered.
pub fn probe(target: &Target) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut conn = Conn::default();
        conn.send(target, Duration::from_secs(30), || ())
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{} request to {}: {e}", kind(target), target.addr))
    })
}

fn kind(target: &Target) -> &'static str {
    if target.stream {
        "stream"
    } else {
        "non-stream"
    }
}

/// Runs one phase against `target`, reading the processes when the window opens and closes:
/// the mock, and the server in between (tollgate, or the reference proxy) when there is one.
pub fn measure(ph: &Phase, target: &Target, mock: &Proc, tollgate: Option<&Proc>) -> Measured {
    let (mock_pid, tg_pid) = (mock.pid(), tollgate.map(Proc::pid));
    let before = (
        procstat::snapshot(mock_pid),
        tg_pid.and_then(procstat::snapshot),
    );
    type Reading = (Option<Snapshot>, Option<Snapshot>);
    let mut start: Reading = (None, None);
    let mut end: Reading = (None, None);
    let mut mark = |m: Mark| {
        let r = (
            procstat::snapshot(mock_pid),
            tg_pid.and_then(procstat::snapshot),
        );
        match m {
            Mark::Start => start = r,
            Mark::End => end = r,
        }
    };
    let outcome = match ph.load {
        Load::Closed(c) => closed::run(target, c, &mut mark),
        Load::Open(o) => open::run(target, o, &mut mark),
        Load::Slow(s) => slow::run(target, s, &mut mark),
    };
    let usage = |z: Option<Snapshot>, a: Option<Snapshot>, b: Option<Snapshot>| {
        let mut u = Usage::between(&a?, &b?);
        u.rss_before_mb = z.map_or(f64::NAN, |z| z.rss_kb as f64 / 1024.0);
        Some(u)
    };
    Measured {
        outcome,
        mock: usage(before.0, start.0, end.0).unwrap_or_default(),
        tollgate: usage(before.1, start.1, end.1),
    }
}

pub fn one_line(m: &Measured, side: Side) -> String {
    let o = &m.outcome;
    let s = o.latency.summary();
    let mut line = format!(
        "{}: {:.0}/s p50 {:.3} p99 {:.3} ms, {} errors",
        match side {
            Side::Direct => "direct",
            Side::Tollgate => "tollgate",
            Side::Control => "control",
            Side::Proxy => "nginx",
        },
        o.rps(),
        s.p50,
        s.p99,
        o.errors
    );
    if let Some(t) = &m.tollgate {
        line += &format!(
            ", {:.1} µs CPU/req, {:.0} MB",
            t.us_per(o.completed),
            t.rss_mb
        );
    }
    if let Some(e) = o.error_samples.first() {
        line += &format!(" (first error: {e})");
    }
    line
}
