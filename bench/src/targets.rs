//! The issue-3 targets, each judged met or not on the run's medians.

use crate::hist::Summary;
use crate::results::{Measured, PhaseResult, ScenarioResult, Side};

/// One target and the figure it was judged on.
pub struct Verdict {
    pub target: &'static str,
    /// The figure and where it comes from; `None` when the run did not measure it.
    pub figure: Option<String>,
    pub met: Option<bool>,
}

impl Verdict {
    pub fn word(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "not met",
            None => "not measured",
        }
    }
}

fn phase<'a>(r: &'a [ScenarioResult], scenario: &str, key: &str) -> Option<&'a PhaseResult> {
    r.iter()
        .find(|s| s.id == scenario)
        .and_then(|s| s.phase(key))
        .filter(|p| !p.tollgate.is_empty())
}

/// The highest fixed rate measured in a scenario, preferring 2,000/s.
fn top_rate<'a>(r: &'a [ScenarioResult], scenario: &str) -> Option<&'a PhaseResult> {
    phase(r, scenario, "rate2000").or_else(|| {
        let s = r.iter().find(|s| s.id == scenario)?;
        s.phases
            .iter()
            .rev()
            .find(|p| p.phase.key.starts_with("rate") && !p.tollgate.is_empty())
    })
}

pub fn cpu_us(m: &Measured) -> f64 {
    m.tollgate
        .map_or(f64::NAN, |t| t.us_per(m.outcome.completed))
}

/// A percentile of tollgate's own time per reply (its `Server-Timing`); NaN without any.
pub fn own_ms(m: &Measured, q: fn(&Summary) -> f64) -> f64 {
    if m.outcome.gateway.is_empty() {
        f64::NAN
    } else {
        q(&m.outcome.gateway.summary())
    }
}

/// The median of a percentile on `side` less its median on the direct side.
pub fn added_by(
    p: &PhaseResult,
    side: Side,
    pick: impl Fn(&Measured) -> Summary,
    q: impl Fn(&Summary) -> f64,
) -> f64 {
    p.median(side, |m| q(&pick(m))) - p.median(Side::Direct, |m| q(&pick(m)))
}

fn added(p: &PhaseResult, pick: impl Fn(&Measured) -> Summary, q: impl Fn(&Summary) -> f64) -> f64 {
    added_by(p, Side::Tollgate, pick, q)
}

/// "; a bare proxy hop here: +x ms", when the reference proxy was measured in this phase.
fn yardstick(
    p: &PhaseResult,
    pick: impl Fn(&Measured) -> Summary,
    q: impl Fn(&Summary) -> f64,
) -> String {
    if p.proxy.is_empty() {
        return String::new();
    }
    format!(
        "; a bare proxy (nginx) in tollgate's place: {:+.3} ms",
        added_by(p, Side::Proxy, pick, q)
    )
}

/// Every target of issue 3.
pub fn judge(r: &[ScenarioResult]) -> Vec<Verdict> {
    let mut out = Vec::new();
    let sat = phase(r, "s1", "saturation");
    let cpu = sat.map(|p| p.median(Side::Tollgate, cpu_us));
    let at_rate = top_rate(r, "s1").map(|p| {
        let rate = p.phase.key.trim_start_matches("rate").to_owned();
        format!(
            "; {:.1} µs at {rate} req/s",
            p.median(Side::Tollgate, cpu_us)
        )
    });
    out.push(Verdict {
        target: "tollgate's own CPU time per request ≤ 60 µs",
        figure: cpu.map(|c| {
            format!(
                "{c:.1} µs at saturation (scenario 1){}",
                at_rate.unwrap_or_default()
            )
        }),
        met: cpu.map(|c| c <= 60.0),
    });
    let rps = sat.map(|p| p.median(Side::Tollgate, |m| m.outcome.rps()));
    out.push(Verdict {
        target: "saturation ≥ 20,000 req/s through tollgate",
        figure: rps.map(|x| format!("{x:.0} req/s")),
        met: rps.map(|x| x >= 20_000.0),
    });
    let lat = |m: &Measured| m.outcome.latency.summary();
    let at = top_rate(r, "s1");
    let rate = |p: &PhaseResult| p.phase.key.trim_start_matches("rate").to_owned();
    let p50 = at.map(|p| {
        (
            added(p, lat, |s| s.p50),
            rate(p),
            yardstick(p, lat, |s| s.p50),
        )
    });
    out.push(Verdict {
        target: "added latency at 2,000 req/s: p50 ≤ 0.25 ms",
        figure: p50
            .as_ref()
            .map(|(x, r, y)| format!("+{x:.3} ms (at {r} req/s{y})")),
        met: p50
            .as_ref()
            .filter(|(_, r, _)| r == "2000")
            .map(|(x, _, _)| *x <= 0.25),
    });
    let p99 = at.map(|p| {
        (
            added(p, lat, |s| s.p99),
            rate(p),
            yardstick(p, lat, |s| s.p99),
        )
    });
    out.push(Verdict {
        target: "added latency at 2,000 req/s: p99 ≤ 0.8 ms",
        figure: p99
            .as_ref()
            .map(|(x, r, y)| format!("+{x:.3} ms (at {r} req/s{y})")),
        met: p99
            .as_ref()
            .filter(|(_, r, _)| r == "2000")
            .map(|(x, _, _)| *x <= 0.8),
    });
    let ttfb = |m: &Measured| m.outcome.ttfb.summary();
    let st = top_rate(r, "s2").map(|p| {
        let own = p.median(Side::Tollgate, |m| own_ms(m, |s| s.p99));
        let y = yardstick(p, ttfb, |s| s.p99);
        (added(p, ttfb, |s| s.p99), rate(p), own, y)
    });
    out.push(Verdict {
        target: "added time to first byte on streams: p99 ≤ 0.5 ms",
        figure: st.as_ref().map(|(x, r, own, y)| {
            format!("+{x:.3} ms (at {r} streams/s; tollgate's own part of it, p99: {own:.3} ms{y})")
        }),
        met: st.as_ref().map(|(x, _, _, _)| *x <= 0.5),
    });
    let idle = phase(r, "s3-10000", "slow");
    let rss = idle.map(|p| {
        let n = p.median(Side::Tollgate, |m| m.outcome.open_at_start as f64);
        (
            p.median(Side::Tollgate, |m| {
                m.tollgate.map_or(f64::NAN, |t| t.rss_mb)
            }),
            n,
        )
    });
    out.push(Verdict {
        target: "10,000 idle streams: tollgate RSS under 500 MB",
        figure: rss.map(|(mb, n)| format!("{mb:.0} MB with {n:.0} streams open")),
        met: rss.map(|(mb, _)| mb < 500.0),
    });
    // Judged against the control measured alongside when there is one (scenario 1 ran
    // minutes earlier, on a machine that may have changed since), else against scenario 1.
    let grown = phase(r, "s4", "saturation");
    let rps = |m: &Measured| m.outcome.rps();
    let growth = grown.and_then(|g| {
        if !g.control.is_empty() {
            let paired =
                |f: &dyn Fn(&Measured) -> f64| g.paired_ratio(Side::Tollgate, Side::Control, f);
            return Some((
                paired(&rps),
                paired(&cpu_us),
                "a fresh database measured alongside",
            ));
        }
        let s1 = sat?;
        let of = |f: &dyn Fn(&Measured) -> f64| {
            g.median(Side::Tollgate, f) / s1.median(Side::Tollgate, f)
        };
        Some((of(&rps), of(&cpu_us), "scenario 1"))
    });
    out.push(Verdict {
        target: "scenario 4 within 10% of scenario 1 (judged on saturation throughput)",
        figure: growth.map(|(rps, cpu, of)| {
            format!("saturation ×{rps:.3} of {of} (CPU per request ×{cpu:.3}, for information)")
        }),
        met: growth.map(|(rps, _, _)| rps >= 0.9),
    });
    out
}
