//! The issue-3 scenarios, sized by a profile: the full run or the ten-second smoke.

use crate::load::closed::Closed;
use crate::load::open::Open;
use crate::load::slow::Slow;
use crate::mock::MockArgs;
use std::time::Duration;

/// How big and how long everything is.
#[derive(Clone, Debug)]
pub struct Profile {
    pub smoke: bool,
    pub reps: usize,
    pub warmup: Duration,
    pub saturation: Duration,
    pub fixed: Duration,
    /// Fixed rates for non-stream requests and for streams (requests per second).
    pub rates: Vec<f64>,
    pub stream_rates: Vec<f64>,
    /// Connections of the closed loop; workers of the open loop.
    pub connections: usize,
    pub open_connections: usize,
    /// Concurrent slow streams, one scenario each.
    pub slow_streams: Vec<usize>,
    pub slow_hold: Duration,
    pub slow_ramp_per_sec: f64,
    pub slow_chunk_delay_ms: u64,
    pub growth_ledger_rows: u64,
    pub growth_keys: u64,
    pub load_threads: usize,
    pub mock_threads: usize,
}

impl Profile {
    pub fn full() -> Self {
        Self {
            smoke: false,
            reps: 3,
            warmup: Duration::from_secs(1),
            saturation: Duration::from_secs(5),
            fixed: Duration::from_secs(10),
            rates: vec![500.0, 2000.0],
            stream_rates: vec![500.0, 2000.0],
            connections: 64,
            open_connections: 64,
            slow_streams: vec![1_000, 10_000],
            slow_hold: Duration::from_secs(5),
            slow_ramp_per_sec: 2_000.0,
            slow_chunk_delay_ms: 500,
            growth_ledger_rows: 1_000_000,
            growth_keys: 10_000,
            load_threads: 2,
            mock_threads: 2,
        }
    }

    /// A miniature of every scenario, about ten seconds in all.
    pub fn smoke() -> Self {
        Self {
            smoke: true,
            reps: 1,
            warmup: Duration::from_millis(150),
            saturation: Duration::from_millis(400),
            fixed: Duration::from_millis(400),
            rates: vec![500.0],
            stream_rates: vec![500.0],
            connections: 16,
            open_connections: 16,
            slow_streams: vec![50],
            slow_hold: Duration::from_millis(400),
            slow_ramp_per_sec: 500.0,
            slow_chunk_delay_ms: 50,
            growth_ledger_rows: 10_000,
            growth_keys: 100,
            load_threads: 2,
            mock_threads: 2,
        }
    }
}

/// The shape of the load in one phase.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    Closed(Closed),
    Open(Open),
    Slow(Slow),
}

/// One measurement, made against the mock directly and through tollgate.
#[derive(Clone, Debug)]
pub struct Phase {
    /// Stable name, used to find the figures the targets are judged on.
    pub key: String,
    pub title: String,
    pub stream: bool,
    pub load: Load,
}

/// What growth data is written into the database before tollgate starts.
#[derive(Clone, Copy, Debug)]
pub struct Growth {
    pub ledger_rows: u64,
    pub keys: u64,
}

/// One scenario: a mock, a fresh tollgate and database, and its phases.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub id: String,
    pub title: String,
    pub mock: MockArgs,
    pub growth: Option<Growth>,
    pub phases: Vec<Phase>,
    pub notes: Vec<String>,
    /// Start a fresh tollgate (same database) for every repetition, so each memory figure
    /// is a new process's.
    pub restart_per_rep: bool,
    /// Also measure every phase through a bare reverse proxy (nginx) in tollgate's place.
    pub reference_proxy: bool,
}

/// Every scenario of the profile. `nofile` is the open-file limit tollgate will inherit:
/// it needs two sockets per stream, so the stream counts are capped to fit.
pub fn all(p: &Profile, nofile: u64) -> Vec<Scenario> {
    let mut out = vec![
        non_stream(p, "s1", "Scenario 1: non-stream chat", None),
        streaming(p),
    ];
    for &k in &p.slow_streams {
        out.push(slow(p, k, nofile));
    }
    let growth = Growth {
        ledger_rows: p.growth_ledger_rows,
        keys: p.growth_keys,
    };
    out.push(non_stream(
        p,
        "s4",
        "Scenario 4: growth (scenario 1 on a grown database)",
        Some(growth),
    ));
    out
}

fn mock(p: &Profile) -> MockArgs {
    MockArgs {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        latency_us: 0,
        chunks: 16,
        chunk_delay_ms: 0,
        prompt_tokens: 8,
        completion_tokens: 16,
        threads: p.mock_threads,
    }
}

fn rate_phases(p: &Profile, rates: &[f64], stream: bool, unit: &str) -> Vec<Phase> {
    rates
        .iter()
        .map(|&rate| Phase {
            key: format!("rate{rate}"),
            title: format!("fixed rate {rate} {unit}/s, {} workers", p.open_connections),
            stream,
            load: Load::Open(Open {
                rate,
                connections: p.open_connections,
                warmup: p.warmup,
                duration: p.fixed,
                threads: p.load_threads,
            }),
        })
        .collect()
}

fn non_stream(p: &Profile, id: &str, title: &str, growth: Option<Growth>) -> Scenario {
    let mut phases = vec![Phase {
        key: "saturation".into(),
        title: format!("saturation, {} connections", p.connections),
        stream: false,
        load: Load::Closed(Closed {
            connections: p.connections,
            warmup: p.warmup,
            duration: p.saturation,
            threads: p.load_threads,
        }),
    }];
    phases.extend(rate_phases(p, &p.rates, false, "req"));
    Scenario {
        id: id.into(),
        title: title.into(),
        mock: mock(p),
        growth,
        phases,
        notes: growth
            .map(|_| {
                "Each measurement through tollgate on the grown database is followed at once by \
                 the same measurement through a second tollgate on a fresh database (the \
                 control; same binary, same mock), and the target is judged on the two side by \
                 side, repetition by repetition: scenario 1 runs minutes earlier, and this \
                 machine's speed drifts over minutes."
                    .to_owned()
            })
            .into_iter()
            .collect(),
        restart_per_rep: false,
        reference_proxy: growth.is_none(),
    }
}

fn streaming(p: &Profile) -> Scenario {
    Scenario {
        id: "s2".into(),
        title: "Scenario 2: streaming chat (16 content chunks, no pause between chunks)".into(),
        mock: mock(p),
        growth: None,
        phases: rate_phases(p, &p.stream_rates, true, "streams"),
        notes: Vec::new(),
        restart_per_rep: false,
        reference_proxy: true,
    }
}

fn slow(p: &Profile, requested: usize, nofile: u64) -> Scenario {
    let cap = (nofile.saturating_sub(256) / 2) as usize;
    let streams = requested.min(cap.max(1));
    let mut notes = Vec::new();
    if streams < requested {
        notes.push(format!(
            "{requested} streams were asked for; {streams} were run, the most that fit: \
             tollgate holds two sockets per stream (client and upstream) and the \
             RLIMIT_NOFILE it could be given here is {nofile}."
        ));
    }
    let ramp = streams as f64 / p.slow_ramp_per_sec;
    // Each stream must outlast the ramp, the hold and some slack.
    let lasts = ramp + p.slow_hold.as_secs_f64() + if p.smoke { 0.5 } else { 5.0 };
    let mut mock = mock(p);
    mock.chunk_delay_ms = p.slow_chunk_delay_ms;
    mock.chunks = (lasts * 1000.0 / p.slow_chunk_delay_ms as f64).ceil() as usize;
    notes.push(format!(
        "Each stream sends {} chunks {} ms apart (about {:.0} s); streams are opened at {} per \
         second, then held for {:.1} s while the processes are measured. Each repetition \
         runs on a freshly started tollgate (same database).",
        mock.chunks,
        p.slow_chunk_delay_ms,
        lasts,
        p.slow_ramp_per_sec,
        p.slow_hold.as_secs_f64()
    ));
    Scenario {
        id: format!("s3-{requested}"),
        title: format!("Scenario 3: {requested} concurrent slow streams"),
        mock,
        growth: None,
        phases: vec![Phase {
            key: "slow".into(),
            title: format!("{streams} concurrent streams"),
            stream: true,
            load: Load::Slow(Slow {
                streams,
                ramp_per_sec: p.slow_ramp_per_sec,
                hold: p.slow_hold,
                stream_timeout: Duration::from_secs_f64(lasts + 60.0),
                threads: p.load_threads,
            }),
        }],
        notes,
        restart_per_rep: true,
        reference_proxy: false,
    }
}
