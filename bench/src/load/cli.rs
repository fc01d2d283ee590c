//! `tollgate-bench load`: one load of any shape against any address, summarised on stdout.

use super::closed::Closed;
use super::open::Open;
use super::slow::Slow;
use super::{closed, open, slow, Outcome};
use crate::client::Target;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Mode {
    /// Closed loop: every connection sends its next request as soon as the last returns.
    Saturation,
    /// Open loop at --rate requests per second, latency corrected for coordinated omission.
    Rate,
    /// --streams concurrent streams held open.
    Slow,
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Server address (the mock or tollgate).
    #[arg(long)]
    pub addr: SocketAddr,
    /// API key sent as a bearer token.
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long, value_enum, default_value = "saturation")]
    pub mode: Mode,
    #[arg(long)]
    pub stream: bool,
    #[arg(long, default_value = "openai/gpt-4o-mini")]
    pub model: String,
    /// Connections (saturation) or workers (rate).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Measured seconds (saturation, rate) or seconds held (slow).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Streams opened per second (slow).
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,
    /// Load threads, a current-thread runtime each.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

pub fn run(a: LoadArgs) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let target = Target::chat(
        a.addr,
        a.key.as_deref(),
        &a.model,
        a.stream || matches!(a.mode, Mode::Slow),
    )?;
    let (warmup, duration) = (
        Duration::from_secs_f64(a.warmup),
        Duration::from_secs_f64(a.duration),
    );
    let mut mark = |_| {};
    let out = match a.mode {
        Mode::Saturation => closed::run(
            &target,
            Closed {
                connections: a.connections,
                warmup,
                duration,
                threads: a.threads,
            },
            &mut mark,
        ),
        Mode::Rate => open::run(
            &target,
            Open {
                rate: a.rate,
                connections: a.connections,
                warmup,
                duration,
                threads: a.threads,
            },
            &mut mark,
        ),
        Mode::Slow => slow::run(
            &target,
            Slow {
                streams: a.streams,
                ramp_per_sec: a.ramp,
                hold: duration,
                stream_timeout: Duration::from_secs(3600),
                threads: a.threads,
            },
            &mut mark,
        ),
    };
    print(&out, a.mode);
    if out.errors > 0 {
        anyhow::bail!("{} errors, e.g. {:?}", out.errors, out.error_samples);
    }
    Ok(())
}

fn print(o: &Outcome, mode: Mode) {
    println!("Accept-Encoding sent: none");
    println!(
        "window {:.1} s, {} replies, {:.0}/s, {} errors",
        o.window.as_secs_f64(),
        o.completed,
        o.rps(),
        o.errors
    );
    for (name, h) in [
        ("latency (to last byte)", &o.latency),
        ("time to first byte", &o.ttfb),
        ("gateway (Server-Timing)", &o.gateway),
    ] {
        if h.is_empty() {
            continue;
        }
        let s = h.summary();
        println!(
            "{name:24} ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            s.p50, s.p90, s.p99, s.p999, s.max
        );
    }
    if matches!(mode, Mode::Slow) {
        println!(
            "streams opened {}, open at start {}, fewest open {}",
            o.opened, o.open_at_start, o.min_open
        );
    }
}
