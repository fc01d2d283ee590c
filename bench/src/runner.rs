//! `run`: each scenario on a fresh mock, tollgate and database, direct and through tollgate in turn.

use crate::client::Target;
use crate::machine::Machine;
use crate::measure::{measure, one_line, probe};
use crate::procs::{self, Tollgate};
use crate::procstat::{self, Usage};
use crate::results::{Billing, PhaseResult, ScenarioResult, Side};
use crate::scenarios::{self, Profile, Scenario};
use crate::{proxy, report, seed};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const EMAIL: &str = "bench@example.com";
pub const MODEL: &str = "openai/gpt-4o-mini";

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The tollgate binary under test [default: <workspace>/target/release/tollgate].
    /// Build it first: `cargo build --release -p tollgate`.
    #[arg(long)]
    pub tollgate: Option<PathBuf>,
    /// Where the report goes [default: <workspace>/docs/benchmarks.md]. The smoke prints it instead.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A ten-second miniature of every scenario; fails on any error; writes no file.
    #[arg(long)]
    pub smoke: bool,
    /// Repetitions of every measurement [default: 3; smoke 1].
    #[arg(long)]
    pub reps: Option<usize>,
    /// Only the scenarios whose id starts with one of these (s1, s2, s3, s4), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let nofile = raise_nofile();
    let bin = args
        .tollgate
        .unwrap_or_else(|| target_dir(&root).join("release/tollgate"));
    if !bin.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p tollgate` (or pass --tollgate PATH)",
            bin.display()
        );
    }
    let mut profile = if args.smoke {
        Profile::smoke()
    } else {
        Profile::full()
    };
    if let Some(reps) = args.reps {
        profile.reps = reps.max(1);
    }
    let machine = Machine::probe(&root, nofile);
    let scenarios: Vec<Scenario> = scenarios::all(&profile, nofile)
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| s.id.starts_with(o)))
        .collect();
    let started = Instant::now();
    let built = modified(&bin);
    // Run a copy, so a rebuild of target/release/tollgate during the run changes nothing.
    let stash = tempfile::Builder::new()
        .prefix("tollgate-bench-bin-")
        .tempdir()?;
    let run_bin = stash.path().join("tollgate");
    std::fs::copy(&bin, &run_bin).with_context(|| format!("copying {}", bin.display()))?;
    let mut results = Vec::new();
    for sc in &scenarios {
        eprintln!("== {}", sc.title);
        let t = Instant::now();
        let r = run_scenario(sc, &profile, &run_bin).unwrap_or_else(|e| ScenarioResult {
            id: sc.id.clone(),
            title: sc.title.clone(),
            notes: sc.notes.clone(),
            problems: vec![format!("the scenario stopped: {e:#}")],
            ..Default::default()
        });
        for p in &r.problems {
            eprintln!("   problem: {p}");
        }
        eprintln!("   {} took {:.1} s", sc.id, t.elapsed().as_secs_f64());
        results.push(r);
    }
    let text = report::render(&report::Context {
        machine: &machine,
        profile: &profile,
        results: &results,
        elapsed: started.elapsed(),
        bin: &bin,
        built: &built,
    });
    let problems = report::problems(&results);
    if profile.smoke {
        println!("{text}");
        if !problems.is_empty() {
            bail!("smoke failed:\n- {}", problems.join("\n- "));
        }
        eprintln!("smoke passed in {:.1} s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    let out = args.out.unwrap_or_else(|| root.join("docs/benchmarks.md"));
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {} after {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    for line in report::target_lines(&results) {
        eprintln!("  {line}");
    }
    for p in problems {
        eprintln!("  problem: {p}");
    }
    Ok(())
}

fn run_scenario(sc: &Scenario, p: &Profile, bin: &Path) -> anyhow::Result<ScenarioResult> {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir()?;
    let setup = Instant::now();
    let tg = Tollgate {
        bin: bin.to_owned(),
        db: dir.path().join("bench.db"),
    };
    let (account_id, key) = tg.bench_account(EMAIL)?;
    let mut notes = sc.notes.clone();
    if let Some(g) = sc.growth {
        let t = Instant::now();
        seed::seed(&tg.db, &account_id, g.ledger_rows, g.keys)?;
        notes.push(format!(
            "Seeded in {:.1} s before tollgate started: the database then held {} ledger rows \
             and {} API keys (TOPUP/CHARGE pairs that net to zero, one pair in ten on the \
             account under load, the rest on 1,000 filler accounts that own the filler keys).",
            t.elapsed().as_secs_f64(),
            seed::count(&tg.db, "SELECT COUNT(*) FROM ledger")?,
            seed::count(&tg.db, "SELECT COUNT(*) FROM api_keys")?,
        ));
    }
    let (mut mock, mock_addr) = procs::start_mock(&sc.mock)?;
    let (mut server, mut addr) = tg.serve(mock_addr, &dir.path().join("tollgate.log"))?;
    // A grown database is judged against a fresh one measured right after it, so that both
    // see the machine as it is at that moment (it drifts over minutes).
    let mut control = match sc.growth {
        Some(_) => Some(Control::start(dir.path(), bin, mock_addr)?),
        None => None,
    };
    // The reference is a yardstick: when it cannot start, the scenario goes on without it
    // and the report lists why.
    let mut problems = Vec::new();
    let mut nginx = None;
    if sc.reference_proxy {
        match proxy::Nginx::start(&dir.path().join("nginx"), mock_addr) {
            Ok(Some(n)) => {
                notes.push(format!(
                    "Reference: every phase is also measured through {} in tollgate's place, \
                     right after tollgate in each repetition (see Method).",
                    n.version
                ));
                nginx = Some(n);
            }
            Ok(None) => notes.push(
                "Reference proxy not measured: no nginx on this machine \
                 (`apt-get install nginx-light` adds it)."
                    .to_owned(),
            ),
            Err(e) => problems.push(format!("the reference proxy did not start: {e:#}")),
        }
    }
    eprintln!("   ready after {:.1} s", setup.elapsed().as_secs_f64());
    let direct = |stream| Target::chat(mock_addr, None, MODEL, stream);
    let through = |addr, stream| Target::chat(addr, Some(&key), MODEL, stream);
    // One request of each kind both ways first, so a broken setup stops with the reply's
    // text; a slow mock's streams take seconds, so there only the non-stream one.
    let mut replies = 0;
    for stream in [false, true] {
        if stream && sc.mock.chunk_delay_ms > 0 {
            continue;
        }
        probe(&direct(stream)?).context("probing the mock")?;
        probe(&through(addr, stream)?).context("probing tollgate")?;
        if let Some(c) = &control {
            probe(&c.target(stream)?).context("probing the control tollgate")?;
        }
        if let Some(n) = &nginx {
            probe(&Target::chat(n.addr, None, MODEL, stream)?)
                .context("probing the reference proxy")?;
        }
        replies += 1;
    }
    let idle = {
        let a = procstat::snapshot(server.pid());
        std::thread::sleep(if p.smoke {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(2)
        });
        a.zip(procstat::snapshot(server.pid()))
            .map(|(a, b)| Usage::between(&a, &b))
    };
    let mut phases: Vec<PhaseResult> = sc.phases.iter().map(PhaseResult::new).collect();
    let pause = Duration::from_millis(if p.smoke { 50 } else { 300 });
    let mut restarts_clean = true;
    for rep in 1..=p.reps {
        if rep > 1 && sc.restart_per_rep {
            restarts_clean &= server.stop(Duration::from_secs(60))?;
            (server, addr) =
                tg.serve(mock_addr, &dir.path().join(format!("tollgate-{rep}.log")))?;
        }
        for (ph, result) in sc.phases.iter().zip(&mut phases) {
            let d = measure(ph, &direct(ph.stream)?, &mock, None);
            std::thread::sleep(pause);
            server.check_alive()?;
            let t = measure(ph, &through(addr, ph.stream)?, &mock, Some(&server));
            std::thread::sleep(pause);
            server.check_alive()?;
            let mut line = format!(
                "   {} rep {rep}/{}: {}: {} | {}",
                sc.id,
                p.reps,
                ph.title,
                one_line(&d, Side::Direct),
                one_line(&t, Side::Tollgate)
            );
            if let Some(n) = &mut nginx {
                let via = Target::chat(n.addr, None, MODEL, ph.stream)?;
                let m = measure(ph, &via, &mock, Some(&n.proc));
                std::thread::sleep(pause);
                n.proc.check_alive()?;
                line += &format!(" | {}", one_line(&m, Side::Proxy));
                result.proxy.push(m);
            }
            if let Some(c) = &mut control {
                let m = measure(ph, &c.target(ph.stream)?, &mock, Some(&c.server));
                std::thread::sleep(pause);
                c.server.check_alive()?;
                line += &format!(" | {}", one_line(&m, Side::Control));
                c.replies += m.outcome.ok_total;
                result.control.push(m);
            }
            eprintln!("{line}");
            replies += t.outcome.ok_total;
            result.direct.push(d);
            result.tollgate.push(t);
        }
    }
    let teardown = Instant::now();
    if !server.stop(Duration::from_secs(60))? || !restarts_clean {
        problems.push("tollgate did not exit cleanly on SIGTERM".to_owned());
    }
    if let Some(c) = control {
        problems.extend(c.finish()?);
    }
    drop(nginx);
    let _ = mock.stop(Duration::from_secs(5));
    match tg.cli(&["ledger", "check"]) {
        Ok(v) if v["ok"] == true => {}
        Ok(v) => problems.push(format!("`tollgate ledger check` found discrepancies: {v}")),
        Err(e) => problems.push(format!("{e:#}")),
    }
    eprintln!("   teardown {:.1} s", teardown.elapsed().as_secs_f64());
    let billing = Billing {
        replies,
        charges: count_u64(
            &tg.db,
            "SELECT COUNT(*) FROM ledger WHERE type = 'MODEL_USAGE'",
        )?,
        usage_rows: count_u64(&tg.db, "SELECT COUNT(*) FROM usage_logs")?,
    };
    let errors: u64 = phases.iter().map(|r| r.errors(Side::Tollgate)).sum();
    if billing.charges < billing.replies || (errors == 0 && billing.charges != billing.replies) {
        problems.push(format!(
            "billing does not add up: {} successful replies through tollgate, {} MODEL_USAGE ledger entries",
            billing.replies, billing.charges
        ));
    }
    Ok(ScenarioResult {
        id: sc.id.clone(),
        title: sc.title.clone(),
        notes,
        phases,
        billing: Some(billing),
        idle,
        problems,
    })
}

/// The second tollgate, on a fresh database, that a grown one is measured against.
struct Control {
    tg: Tollgate,
    server: procs::Proc,
    addr: std::net::SocketAddr,
    key: String,
    replies: u64,
}

impl Control {
    fn start(dir: &Path, bin: &Path, mock: std::net::SocketAddr) -> anyhow::Result<Self> {
        let dir = dir.join("control");
        std::fs::create_dir_all(&dir)?;
        let tg = Tollgate {
            bin: bin.to_owned(),
            db: dir.join("bench.db"),
        };
        let (_, key) = tg.bench_account(EMAIL)?;
        let (server, addr) = tg.serve(mock, &dir.join("tollgate.log"))?;
        Ok(Self {
            tg,
            server,
            addr,
            key,
            replies: 0,
        })
    }

    fn target(&self, stream: bool) -> anyhow::Result<Target> {
        Target::chat(self.addr, Some(&self.key), MODEL, stream)
    }

    /// Stops it and checks its books as the scenario's own are checked.
    fn finish(mut self) -> anyhow::Result<Vec<String>> {
        let mut problems = Vec::new();
        if !self.server.stop(Duration::from_secs(60))? {
            problems.push("the control tollgate did not exit cleanly on SIGTERM".to_owned());
        }
        match self.tg.cli(&["ledger", "check"]) {
            Ok(v) if v["ok"] == true => {}
            Ok(v) => problems.push(format!(
                "control: `tollgate ledger check` found discrepancies: {v}"
            )),
            Err(e) => problems.push(format!("control: {e:#}")),
        }
        let charges = count_u64(
            &self.tg.db,
            "SELECT COUNT(*) FROM ledger WHERE type = 'MODEL_USAGE'",
        )?;
        // Its probes are charged too.
        if charges < self.replies {
            problems.push(format!(
                "control: billing does not add up: {} successful replies, {charges} MODEL_USAGE ledger entries",
                self.replies
            ));
        }
        Ok(problems)
    }
}

fn count_u64(db: &Path, sql: &str) -> anyhow::Result<u64> {
    Ok(seed::count(db, sql)?.max(0) as u64)
}

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// Open files the largest slow-stream scenario needs in tollgate: two sockets for each of
/// 10,000 streams, and room for the rest.
const NOFILE_WANTED: u64 = 24_576;

/// Raises the open-file limit the children inherit, and returns it: the hard limit to
/// [`NOFILE_WANTED`] when it is lower and the process may (a privileged one), then the soft
/// limit to the hard one.
fn raise_nofile() -> u64 {
    let hard = rlimit::Resource::NOFILE.get().map_or(0, |(_, hard)| hard);
    if hard < NOFILE_WANTED {
        let _ = rlimit::Resource::NOFILE.set(NOFILE_WANTED, NOFILE_WANTED);
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft)
}

/// When `path` was last modified, as text ("unknown" when it cannot be read).
pub fn modified(path: &Path) -> String {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| {
            chrono::DateTime::<chrono::Utc>::from(t)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        })
        .unwrap_or_else(|_| "unknown".into())
}
