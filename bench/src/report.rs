//! The report: docs/benchmarks.md (or stdout for the smoke), every figure as a median.

use crate::hist::Summary;
use crate::machine::Machine;
use crate::results::{Measured, PhaseResult, ScenarioResult, Side};
use crate::scenarios::{Load, Profile};
use crate::targets::{self, added_by, cpu_us, own_ms};
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

pub struct Context<'a> {
    pub machine: &'a Machine,
    pub profile: &'a Profile,
    pub results: &'a [ScenarioResult],
    pub elapsed: Duration,
    pub bin: &'a Path,
    /// The binary's modification time when the run started.
    pub built: &'a str,
}

/// What must fail the smoke (and is listed in a full report): scenario problems, request
/// errors, phases that completed nothing, slow streams that were not all open.
pub fn problems(results: &[ScenarioResult]) -> Vec<String> {
    let mut out = Vec::new();
    for s in results {
        out.extend(s.problems.iter().map(|p| format!("{}: {p}", s.id)));
        for p in &s.phases {
            for side in [Side::Direct, Side::Tollgate, Side::Control, Side::Proxy] {
                let name = format!("{} {} ({})", s.id, p.phase.title, side_name(side));
                for m in p.side(side) {
                    let o = &m.outcome;
                    if o.errors > 0 {
                        out.push(format!(
                            "{name}: {} errors, e.g. {:?}",
                            o.errors, o.error_samples
                        ));
                    }
                    if o.unsent > 0 {
                        out.push(format!(
                            "{name}: fell behind the schedule, {} requests never sent",
                            o.unsent
                        ));
                    }
                    if o.completed == 0 {
                        out.push(format!("{name}: no successful reply in the window"));
                    }
                    if let Load::Slow(sl) = p.phase.load {
                        if o.open_at_start < sl.streams as u64 {
                            out.push(format!(
                                "{name}: {} of {} streams open when measured",
                                o.open_at_start, sl.streams
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

/// One line per target, for the console.
pub fn target_lines(results: &[ScenarioResult]) -> Vec<String> {
    targets::judge(results)
        .iter()
        .map(|v| {
            let fig = v.figure.as_deref().unwrap_or("–");
            format!("{}: {} ({fig})", v.target, v.word())
        })
        .collect()
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Direct => "direct",
        Side::Tollgate => "tollgate",
        Side::Control => "control (fresh database)",
        Side::Proxy => "bare proxy (nginx)",
    }
}

pub fn render(cx: &Context) -> String {
    let mut s = String::new();
    let m = cx.machine;
    let p = cx.profile;
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `cargo run --release -p tollgate-bench -- run{}` (after \
         `cargo build --release -p tollgate -p tollgate-bench`). Every figure is the median \
         of {} repetitions; within each repetition the same load runs against the mock \
         directly and then through tollgate, so differences and ratios compare runs made \
         seconds apart on the same noisy machine.\n",
        if p.smoke { " --smoke" } else { "" },
        p.reps
    );
    let _ = writeln!(s, "## Machine and run\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    for (k, v) in [
        ("date", m.date.clone()),
        ("commit", m.commit.clone()),
        ("CPU", format!("{} × {}", m.cpus, m.cpu_model)),
        ("memory", format!("{:.1} GiB", m.memory_gib)),
        ("kernel", m.kernel.clone()),
        ("load average at start", m.loadavg.clone()),
        ("toolchain", m.rustc.clone()),
        (
            "RLIMIT_NOFILE (raised as far as allowed)",
            m.nofile.to_string(),
        ),
        (
            "tollgate binary",
            format!("{} (built {})", cx.bin.display(), cx.built),
        ),
        ("run time", format!("{:.0} s", cx.elapsed.as_secs_f64())),
        ("machine speed during the run", machine_speed(cx.results)),
    ] {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(s, "\n## Method\n");
    let _ = writeln!(s, "{}", method(p));
    let _ = writeln!(s, "## Targets (issue 3)\n");
    let _ = writeln!(s, "| target | figure | verdict |\n|---|---|---|");
    for v in targets::judge(cx.results) {
        let fig = v.figure.as_deref().unwrap_or("–");
        let _ = writeln!(s, "| {} | {fig} | **{}** |", v.target, v.word());
    }
    let problems = problems(cx.results);
    if !problems.is_empty() {
        let _ = writeln!(s, "\n## Problems seen during the run\n");
        for pr in &problems {
            let _ = writeln!(s, "- {pr}");
        }
    }
    for r in cx.results {
        scenario(&mut s, r);
    }
    let _ = writeln!(s, "\n## Every repetition\n");
    for r in cx.results {
        for ph in &r.phases {
            repetitions(&mut s, r, ph);
        }
    }
    s
}

/// The mock alone at saturation (scenario 1's direct side): the same binary and load on
/// every run, so it shows how fast the shared, noisy machine was while this run was made.
fn machine_speed(results: &[ScenarioResult]) -> String {
    let Some(ph) = results
        .iter()
        .find(|r| r.id == "s1")
        .and_then(|r| r.phase("saturation"))
        .filter(|p| !p.direct.is_empty())
    else {
        return "not measured".into();
    };
    let rps = ph.median(Side::Direct, |m| m.outcome.rps());
    let cpu = ph.median(Side::Direct, |m| m.mock.us_per(m.outcome.completed));
    format!(
        "the mock alone served {rps:.0} req/s at saturation, {cpu:.1} µs of its CPU per \
         request (the same mock and load on every run: compare runs by it)"
    )
}

fn method(p: &Profile) -> String {
    format!(
        "- **Requests.** `POST /v1/chat/completions` with \
         `{{\"model\":\"openai/gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}],\"max_tokens\":16}}` \
         (streams add `\"stream\":true,\"stream_options\":{{\"include_usage\":true}}`), a priced \
         model routed to the mock through the OpenAI-compatible adapter, on a verified account \
         with credits: auth, tier policy, credit hold, settlement and usage log are all on \
         (SQLite, a fresh database per scenario).\n\
         - **Accept-Encoding.** The load generator sends **no `Accept-Encoding` header**, so \
         every reply is uncompressed (tollgate's adapter asks the mock for `identity`).\n\
         - **Mock upstream** (`tollgate-bench mock`): hyper 1.x, {mt} runtime threads, \
         pre-rendered bodies, TCP_NODELAY, no latency before the reply, 8 prompt and 16 \
         completion tokens; streams are a role chunk, 16 content chunks, a finish chunk, the \
         `choices: []` usage chunk and `data: [DONE]`. Its own cost is the \"mock CPU per \
         request\" row; its saturation figure is the \"direct\" column of the saturation rows.\n\
         - **Load generator** (`tollgate-bench load`): hyper's HTTP/1.1 client, one keep-alive \
         connection per worker, {lt} threads with a current-thread runtime each, request \
         bodies serialised once. *Saturation*: {c} connections in a closed loop for {sat:.1} s \
         after {w:.1} s of warm-up; latency from each send. *Fixed rate*: an open loop of \
         {oc} workers for {fix:.1} s after {w:.1} s of warm-up; latency is corrected for \
         coordinated omission (a request that waited for a free worker is timed from its \
         scheduled send time). *Streams*: TTFB is the first body bytes (the first SSE event), \
         TTLB the last. Percentiles come from HDR histograms (3 significant digits).\n\
         - **Processes.** tollgate's and the mock's CPU time (utime + stime from \
         `/proc/PID/stat`) and resident memory (`VmRSS`, peak `VmHWM`) are read when the \
         measured window opens and closes; CPU per request is that CPU time divided by the \
         replies completed in the window. The mock, the load generator and tollgate share \
         the machine's {cpus} cores; nothing is pinned.\n\
         - **Added** latency is the median of tollgate's percentile minus the median of the \
         direct one; ratios are tollgate ÷ direct.\n\
         - **Reference proxy.** In scenarios 1 and 2 every phase is also measured through \
         nginx (when installed) forwarding to the mock in tollgate's place, right after \
         tollgate: a worker per core, keep-alive connections to the mock, no buffering, \
         TCP_NODELAY, no access log. That hop does no work of its own, so its added latency \
         is the part of tollgate's that any extra HTTP hop costs on this machine.\n\
         - **tollgate's own time** is read from each reply's `Server-Timing` header: \
         `gateway` is the time from the request's arrival to the reply's head less the time \
         spent waiting for the upstream (for a stream, until its first event), so it leaves \
         out the network hops and the waits for a CPU that the added latency includes.\n\
         - **Checks.** After each scenario tollgate is stopped with SIGTERM, `tollgate ledger \
         check` must pass, and the `MODEL_USAGE` ledger entries are counted against the \
         successful replies that went through tollgate (each must be charged exactly once).\n",
        mt = p.mock_threads,
        lt = p.load_threads,
        c = p.connections,
        oc = p.open_connections,
        sat = p.saturation.as_secs_f64(),
        fix = p.fixed.as_secs_f64(),
        w = p.warmup.as_secs_f64(),
        cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
    )
}

fn scenario(s: &mut String, r: &ScenarioResult) {
    let _ = writeln!(s, "\n## {}\n", r.title);
    for n in &r.notes {
        let _ = writeln!(s, "{n}\n");
    }
    if let Some(b) = r.billing {
        let _ = writeln!(
            s,
            "Billing: {} successful replies through tollgate (warm-up and probes included), \
             {} `MODEL_USAGE` ledger entries, {} usage-log rows.\n",
            b.replies, b.charges, b.usage_rows
        );
    }
    if let Some(u) = r.idle {
        let _ = writeln!(
            s,
            "tollgate with no load, over {:.1} s after start: {:.1}% of one core, {:.1} MB resident.\n",
            u.wall_secs,
            u.cpu_percent(),
            u.rss_mb
        );
    }
    for pr in &r.problems {
        let _ = writeln!(s, "**Problem:** {pr}\n");
    }
    for ph in &r.phases {
        let _ = writeln!(s, "### {}\n", ph.phase.title);
        match ph.phase.load {
            Load::Slow(_) => slow_table(s, ph),
            _ => rate_table(s, ph),
        }
        if !ph.control.is_empty() {
            control_note(s, ph);
        }
        if !ph.proxy.is_empty() {
            proxy_note(s, ph);
        }
    }
}

/// The reference proxy's figures beside the direct ones: what a hop with no work of its own
/// adds here.
fn proxy_note(s: &mut String, ph: &PhaseResult) {
    let lat = |m: &Measured| m.outcome.latency.summary();
    let ttfb = |m: &Measured| m.outcome.ttfb.summary();
    let four = |pick: &dyn Fn(&Measured) -> Summary| {
        let names = ["p50", "p90", "p99", "p99.9"];
        names
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let x = added_by(ph, Side::Proxy, pick, |s| s.quantiles()[i]);
                format!("{q} {}", signed(x))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let added = if ph.phase.stream {
        format!(
            "added time to first byte {}; to last byte {}",
            four(&ttfb),
            four(&lat)
        )
    } else {
        format!("added latency {}", four(&lat))
    };
    let _ = writeln!(
        s,
        "Through the bare proxy (nginx) in tollgate's place, in the same repetitions: {} \
         replies/s; {added} (ms); its CPU per request {} µs (all its processes); {} errors.\n",
        num(ph.median(Side::Proxy, |m| m.outcome.rps()), 0),
        num(ph.median(Side::Proxy, cpu_us), 1),
        ph.errors(Side::Proxy),
    );
}

/// A difference with its sign, or a dash.
fn signed(x: f64) -> String {
    if x.is_finite() {
        format!("{x:+.3}")
    } else {
        "–".into()
    }
}

/// The control's medians, and tollgate's figures as paired ratios to them.
fn control_note(s: &mut String, ph: &PhaseResult) {
    let rps = |m: &Measured| m.outcome.rps();
    let p50 = |m: &Measured| m.outcome.latency.summary().p50;
    let _ = writeln!(
        s,
        "Control, a second tollgate on a fresh database measured right after this one in each \
         repetition: {} replies/s, {} µs CPU per request, latency p50 {} ms (medians). This \
         tollgate against it, repetition by repetition (median ratio): replies per second \
         ×{}, CPU per request ×{}, latency p50 ×{}.\n",
        num(ph.median(Side::Control, rps), 0),
        num(ph.median(Side::Control, cpu_us), 1),
        num(ph.median(Side::Control, p50), 3),
        num(ph.paired_ratio(Side::Tollgate, Side::Control, rps), 3),
        num(ph.paired_ratio(Side::Tollgate, Side::Control, cpu_us), 3),
        num(ph.paired_ratio(Side::Tollgate, Side::Control, p50), 3),
    );
}

/// A number with `d` decimals, or a dash.
fn num(x: f64, d: usize) -> String {
    if x.is_finite() {
        format!("{x:.d$}")
    } else {
        "–".into()
    }
}

/// A row: direct, tollgate, difference and ratio of the medians of `f`.
fn row(s: &mut String, name: &str, ph: &PhaseResult, d: usize, f: impl Fn(&Measured) -> f64) {
    let a = ph.median(Side::Direct, &f);
    let b = ph.median(Side::Tollgate, &f);
    let diff = if (b - a).is_finite() {
        format!("{:+.d$}", b - a)
    } else {
        "–".into()
    };
    let ratio = if a > 0.0 && b.is_finite() {
        format!("×{:.2}", b / a)
    } else {
        "–".into()
    };
    let _ = writeln!(
        s,
        "| {name} | {} | {} | {diff} | {ratio} |",
        num(a, d),
        num(b, d)
    );
}

/// A row with a figure for each side only.
fn pair_row(s: &mut String, name: &str, a: String, b: String) {
    let _ = writeln!(s, "| {name} | {a} | {b} | | |");
}

const HEAD: &str = "| figure (median) | direct | tollgate | tollgate − direct | tollgate ÷ direct |\n|---|---:|---:|---:|---:|";

fn rate_table(s: &mut String, ph: &PhaseResult) {
    let _ = writeln!(s, "{HEAD}");
    row(s, "replies per second", ph, 0, |m| m.outcome.rps());
    let lat = |m: &Measured| m.outcome.latency.summary();
    let ttfb = |m: &Measured| m.outcome.ttfb.summary();
    let names = ["p50", "p90", "p99", "p99.9"];
    type Pick<'a> = &'a dyn Fn(&Measured) -> Summary;
    let series: Vec<(&str, Pick)> = if ph.phase.stream {
        vec![("time to first byte", &ttfb), ("time to last byte", &lat)]
    } else {
        vec![("latency", &lat)]
    };
    for (label, pick) in series {
        for (i, q) in names.iter().enumerate() {
            row(s, &format!("{label} {q} (ms)"), ph, 3, |m| {
                pick(m).quantiles()[i]
            });
        }
    }
    let own = |q: fn(&Summary) -> f64| num(ph.median(Side::Tollgate, |m| own_ms(m, q)), 3);
    pair_row(
        s,
        "tollgate's own time before the response head, p50 / p99 (ms, its `Server-Timing`)",
        String::new(),
        format!("{} / {}", own(|s| s.p50), own(|s| s.p99)),
    );
    row(s, "mock CPU per request (µs)", ph, 1, |m| {
        m.mock.us_per(m.outcome.completed)
    });
    let tg = |f: fn(&crate::procstat::Usage) -> f64| {
        move |m: &Measured| m.tollgate.as_ref().map_or(f64::NAN, f)
    };
    pair_row(
        s,
        "tollgate CPU per request (µs)",
        String::new(),
        num(ph.median(Side::Tollgate, cpu_us), 1),
    );
    pair_row(
        s,
        "tollgate CPU (% of one core)",
        String::new(),
        num(ph.median(Side::Tollgate, tg(|u| u.cpu_percent())), 0),
    );
    pair_row(
        s,
        "tollgate RSS at the end (MB)",
        String::new(),
        num(ph.median(Side::Tollgate, tg(|u| u.rss_mb)), 1),
    );
    pair_row(
        s,
        "errors (all repetitions)",
        ph.errors(Side::Direct).to_string(),
        ph.errors(Side::Tollgate).to_string(),
    );
    if let Load::Open(_) = ph.phase.load {
        let unsent = |side| ph.side(side).iter().map(|m| m.outcome.unsent).sum::<u64>();
        pair_row(
            s,
            "scheduled, never sent: fell behind (all repetitions)",
            unsent(Side::Direct).to_string(),
            unsent(Side::Tollgate).to_string(),
        );
    }
    s.push('\n');
}

fn slow_table(s: &mut String, ph: &PhaseResult) {
    let streams = match ph.phase.load {
        Load::Slow(sl) => sl.streams,
        _ => 0,
    };
    let _ = writeln!(s, "{HEAD}");
    let med = |side, f: &dyn Fn(&Measured) -> f64| ph.median(side, f);
    let both = |s: &mut String, name: &str, d: usize, f: &dyn Fn(&Measured) -> f64| {
        pair_row(
            s,
            name,
            num(med(Side::Direct, f), d),
            num(med(Side::Tollgate, f), d),
        );
    };
    pair_row(
        s,
        "streams asked for",
        streams.to_string(),
        streams.to_string(),
    );
    both(s, "open when the window opened", 0, &|m| {
        m.outcome.open_at_start as f64
    });
    both(s, "fewest open during the window", 0, &|m| {
        m.outcome.min_open as f64
    });
    both(s, "completed with [DONE]", 0, &|m| {
        m.outcome.completed as f64
    });
    pair_row(
        s,
        "errors (all repetitions)",
        ph.errors(Side::Direct).to_string(),
        ph.errors(Side::Tollgate).to_string(),
    );
    both(s, "time to first byte p99 (ms)", 1, &|m| {
        m.outcome.ttfb.summary().p99
    });
    let tg = |f: fn(&crate::procstat::Usage) -> f64| {
        move |m: &Measured| m.tollgate.as_ref().map_or(f64::NAN, f)
    };
    pair_row(
        s,
        "tollgate RSS while held (MB)",
        String::new(),
        num(ph.median(Side::Tollgate, tg(|u| u.rss_mb)), 1),
    );
    pair_row(
        s,
        "tollgate peak RSS, VmHWM (MB)",
        String::new(),
        num(ph.median(Side::Tollgate, tg(|u| u.hwm_mb)), 1),
    );
    pair_row(
        s,
        "tollgate RSS before the streams (MB)",
        String::new(),
        num(ph.median(Side::Tollgate, tg(|u| u.rss_before_mb)), 1),
    );
    pair_row(
        s,
        "tollgate RSS added per open stream (KB)",
        String::new(),
        num(
            ph.median(Side::Tollgate, |m| {
                let open = m.outcome.open_at_start.max(1) as f64;
                let added = |u: &crate::procstat::Usage| (u.rss_mb - u.rss_before_mb) * 1024.0;
                m.tollgate.as_ref().map_or(f64::NAN, |u| added(u) / open)
            }),
            1,
        ),
    );
    pair_row(
        s,
        "tollgate CPU while held (% of one core)",
        String::new(),
        num(ph.median(Side::Tollgate, tg(|u| u.cpu_percent())), 1),
    );
    both(s, "mock RSS while held (MB)", 1, &|m| m.mock.rss_mb);
    both(s, "mock CPU while held (% of one core)", 1, &|m| {
        m.mock.cpu_percent()
    });
    s.push('\n');
}

fn repetitions(s: &mut String, r: &ScenarioResult, ph: &PhaseResult) {
    let _ = writeln!(s, "**{} — {}**\n", r.id, ph.phase.title);
    let _ = writeln!(
        s,
        "| rep | side | replies/s | p50 | p90 | p99 | p99.9 | TTFB p99 | ms window | errors | server µs/req | server RSS MB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for side in [Side::Direct, Side::Tollgate, Side::Control, Side::Proxy] {
        for (i, m) in ph.side(side).iter().enumerate() {
            let o = &m.outcome;
            let l = o.latency.summary();
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {} | {} | {} |",
                i + 1,
                side_name(side),
                o.rps(),
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                o.ttfb.summary().p99,
                o.window.as_secs_f64() * 1000.0,
                o.errors,
                num(cpu_us(m), 1),
                m.tollgate.map_or("".into(), |u| num(u.rss_mb, 1)),
            );
        }
    }
    s.push('\n');
}
