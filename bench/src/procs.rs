//! The processes under test: the mock and `tollgate serve` started and stopped, and the CLI.

use crate::mock::MockArgs;
use anyhow::{bail, Context};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    name: &'static str,
    child: Option<Child>,
}

impl Proc {
    pub fn new(name: &'static str, child: Child) -> Self {
        Self {
            name,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL. Returns whether it exited cleanly.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        if child.try_wait()?.is_some() {
            bail!("{} had already exited", self.name);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(false)
    }

    /// Waits until a GET of `path` on `addr` answers with a status `ok` accepts; fails when
    /// the process exits first (with its log, read from `log`) or `within` runs out.
    pub fn wait_ready(
        &mut self,
        addr: SocketAddr,
        path: &str,
        ok: impl Fn(u16) -> bool,
        within: Duration,
        log: &Path,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if get_status(addr, path).is_ok_and(&ok) {
                return Ok(());
            }
            if let Err(e) = self.check_alive() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{e}; its log:\n{log}");
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not become ready on {addr} within {} s",
                    self.name,
                    within.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = &mut self.child {
            if let Some(status) = c.try_wait()? {
                bail!("{} exited unexpectedly ({status})", self.name);
            }
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts this binary's `mock` subcommand and reads the address it listens on.
pub fn start_mock(args: &MockArgs) -> anyhow::Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut child = Command::new(exe)
        .arg("mock")
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the mock")?;
    let stdout = child.stdout.take().context("mock stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let proc = Proc {
        name: "mock",
        child: Some(child),
    };
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .with_context(|| format!("the mock did not report its address (said {line:?})"))?
        .parse()?;
    Ok((proc, addr))
}

/// The tollgate binary and the SQLite database it runs on.
pub struct Tollgate {
    pub bin: PathBuf,
    pub db: PathBuf,
}

impl Tollgate {
    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.db.display())
    }

    /// Runs an operator command and returns its JSON output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self
            .command()
            .args(["--database-url", &self.database_url()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "`tollgate {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "`tollgate {}` printed no JSON: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The account under load, made with the CLI as an operator would: created, verified
    /// with the sandbox card, granted 10^12 credits. Returns its id and a new API key.
    pub fn bench_account(&self, email: &str) -> anyhow::Result<(String, String)> {
        let password = "benchpass1";
        let account = self.cli(&[
            "account",
            "create",
            "--email",
            email,
            "--password",
            password,
        ])?;
        let id = account["id"].as_str().context("account id")?.to_owned();
        let card = "4242424242424242";
        self.cli(&["billing", "add-card", "--email", email, "--card", card])?;
        let credits = "1000000000000";
        let grant = ["--credits", credits, "--reason", "bench"];
        self.cli(&[&["credits", "grant", "--email", email][..], &grant].concat())?;
        let key = self.cli(&["key", "create", "--email", email])?["key"]
            .as_str()
            .context("key")?
            .to_owned();
        Ok((id, key))
    }

    /// Starts `tollgate serve` routed to the mock, and waits for /readyz.
    pub fn serve(&self, mock: SocketAddr, log: &Path) -> anyhow::Result<(Proc, SocketAddr)> {
        let addr = free_port()?;
        let log_file = std::fs::File::create(log)?;
        let child = self
            .command()
            .args(["--database-url", &self.database_url()])
            .args(["serve", "--listen", &addr.to_string()])
            .env("OPENAI_API_KEY", "bench")
            .env("OPENAI_BASE_URL", format!("http://{mock}/v1"))
            .env("TOLLGATE_LOG", "warn")
            // Every load comes from one address (loopback): no per-peer connection cap.
            .env("TOLLGATE__SERVER__MAX_CONNECTIONS_PER_PEER", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let mut proc = Proc::new("tollgate", child);
        proc.wait_ready(addr, "/readyz", |s| s == 200, Duration::from_secs(30), log)?;
        Ok((proc, addr))
    }

    /// A command for the binary with a clean environment: no configuration leaks in.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("TOLLGATE") || k.starts_with("OPENAI_") {
                cmd.env_remove(k);
            }
        }
        cmd
    }
}

/// An unused loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The status code of a plain GET.
pub fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head)?;
    let line = String::from_utf8_lossy(&head);
    line.get(9..12)
        .context("short status line")?
        .parse()
        .context("status code")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_exits_before_answering_fails_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let child = Command::new("sh")
            .args(["-c", "echo 'bind: address in use' >&2; exit 3"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut proc = Proc::new("server", child);
        let addr = free_port().unwrap();
        let e = proc
            .wait_ready(addr, "/", |_| true, Duration::from_secs(10), &log)
            .unwrap_err()
            .to_string();
        assert!(e.contains("server exited unexpectedly"), "{e}");
        assert!(e.contains("bind: address in use"), "{e}");
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let mut proc = Proc::new("sleeper", child);
        let addr = free_port().unwrap();
        let e = proc
            .wait_ready(
                addr,
                "/",
                |_| true,
                Duration::from_millis(200),
                &dir.path().join("none"),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("sleeper did not become ready"), "{e}");
    }
}
