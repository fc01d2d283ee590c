//! Test harness: runs the real `tollgate` binary on a loopback port with its own database,
//! and drives it over HTTP and through its CLI.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
pub const PASSWORD: &str = "correct-horse-battery";

/// A database for one test: a fresh SQLite file, or a fresh PostgreSQL database.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/tollgate.db", dir.path().display());
        Self {
            url,
            _dir: Some(dir),
        }
    }

    /// A new database on the local PostgreSQL server (`TOLLGATE_TEST_POSTGRES_URL`, default
    /// `postgres://postgres@127.0.0.1:5432`). Fails loudly when the server is unreachable.
    pub async fn postgres() -> Self {
        let base = std::env::var("TOLLGATE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let name = format!("tg_it_{:016x}", rand::random::<u64>());
        let admin = sqlx::PgPool::connect(&format!("{base}/postgres"))
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {base} is required for this test: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        Self {
            url: format!("{base}/{name}"),
            _dir: None,
        }
    }
}

/// A running `tollgate serve`.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub db_url: String,
    env: Vec<(String, String)>,
    pub logs: mpsc::Receiver<String>,
    /// Lines printed before the server was listening.
    startup: Vec<String>,
}

/// Env for a quick server: instant demo streams, short timeouts.
pub fn fast_env() -> Vec<(String, String)> {
    vec![(
        "TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND".into(),
        "0".into(),
    )]
}

impl Server {
    pub fn start(db_url: &str, env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = fast_env()
            .into_iter()
            .chain(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
            .collect();
        Self::spawn(db_url, env, "127.0.0.1:0")
    }

    /// A server started by `sh`, which runs `prelude` (e.g. `ulimit -S -n 256`) and then
    /// execs tollgate in its place: the process is tollgate itself, set up by the prelude.
    pub fn start_after(prelude: &str, db_url: &str) -> Self {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("{prelude} && exec \"$0\" \"$@\""), BIN]);
        Self::launch(cmd, db_url, fast_env(), "127.0.0.1:0")
    }

    /// A server whose OpenAI provider is the (fake) upstream at `upstream_url`.
    pub fn with_upstream(db_url: &str, upstream_url: &str, env: &[(&str, &str)]) -> Self {
        let mut all = vec![
            ("OPENAI_API_KEY", "sk-upstream-test"),
            ("OPENAI_BASE_URL", upstream_url),
        ];
        all.extend_from_slice(env);
        Self::start(db_url, &all)
    }

    fn spawn(db_url: &str, env: Vec<(String, String)>, listen: &str) -> Self {
        Self::launch(Command::new(BIN), db_url, env, listen)
    }

    /// Starts `cmd` (tollgate, or what execs it) with the arguments and env of a test server.
    fn launch(mut cmd: Command, db_url: &str, env: Vec<(String, String)>, listen: &str) -> Self {
        cmd.args(["serve", "--listen", listen, "--database-url", db_url])
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env("TOLLGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tollgate");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut startup = Vec::new();
        let base = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| {
                    panic!("tollgate did not start (database {db_url}): {startup:?}")
                });
            startup.push(line.clone());
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                break format!("http://{addr}");
            }
        };
        Self {
            child,
            base,
            db_url: db_url.to_owned(),
            env,
            logs: rx,
            startup,
        }
    }

    /// Restarts on the same port and database.
    pub fn restart_after_kill(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let listen = self.base.trim_start_matches("http://").to_owned();
        let env = std::mem::take(&mut self.env);
        Self::spawn(&self.db_url.clone(), env, &listen)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let status = self.child.wait().expect("wait");
        std::mem::forget(self);
        status
    }

    /// Log lines printed so far.
    pub fn drain_logs(&self) -> Vec<String> {
        self.startup
            .iter()
            .cloned()
            .chain(self.logs.try_iter())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a CLI command against `db_url`; returns (exit ok, stdout JSON or Null, stderr).
pub fn cli(db_url: &str, args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--database-url", db_url])
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("run tollgate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a CLI command that must succeed and print JSON.
pub fn cli_ok(db_url: &str, args: &[&str]) -> Value {
    let (ok, json, err) = cli(db_url, args);
    assert!(ok, "tollgate {args:?} failed: {err}");
    assert!(!json.is_null(), "tollgate {args:?} printed no JSON");
    json
}

/// Creates an account with a regular key; `card` adds that sandbox card. Returns the key.
pub fn account(db_url: &str, email: &str, card: Option<&str>) -> String {
    cli_ok(
        db_url,
        &[
            "account",
            "create",
            "--email",
            email,
            "--password",
            PASSWORD,
        ],
    );
    if let Some(card) = card {
        cli_ok(
            db_url,
            &["billing", "add-card", "--email", email, "--card", card],
        );
    }
    cli_ok(db_url, &["key", "create", "--email", email])["key"]
        .as_str()
        .expect("key")
        .to_owned()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

pub fn chat_body(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Say hello to the ledger"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

pub async fn post_chat(server: &Server, key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request")
}

/// Asserts the SPEC §6 error body and returns its message.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status().as_u16(), status, "status");
    let path = resp.url().path().to_owned();
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_error_shape(&body, status, code, &path);
    body["message"].as_str().unwrap_or_default().to_owned()
}

pub fn assert_error_shape(body: &Value, status: u16, code: &str, path: &str) {
    let obj = body.as_object().expect("object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "error",
            "message",
            "path",
            "requestId",
            "statusCode",
            "timestamp"
        ],
        "{body}"
    );
    assert_eq!(body["statusCode"], json!(status.to_string()), "{body}");
    assert_eq!(body["path"], json!(path), "{body}");
    assert_eq!(body["error"]["code"], json!(code), "{body}");
    assert_eq!(body["error"]["message"], body["message"], "{body}");
    assert!(
        body["error"]["type"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    let id = body["requestId"].as_str().expect("requestId");
    assert_eq!(id.len(), 36, "{body}");
    let ts = body["timestamp"].as_str().expect("timestamp");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "timestamp {ts}"
    );
}

/// The account's balance through the API.
pub async fn balance(server: &Server, key: &str) -> Value {
    client()
        .get(server.url("/v1/billing/balance"))
        .bearer_auth(key)
        .send()
        .await
        .expect("balance")
        .json()
        .await
        .expect("balance JSON")
}

/// Reads an SSE body into its data payloads.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

/// Starts `tollgate serve` expecting it to refuse to start; returns what it printed.
pub fn serve_refused(db_url: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--database-url", db_url])
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in fast_env()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(env.iter().copied())
    {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn tollgate");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(!status.success(), "serve exited successfully");
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
                .expect("stderr");
            return err;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve was expected to refuse to start, and kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A whole SSE reply's data payloads and the `meta.usage.credits_used` of its last chunk
/// (`None` when the stream did not end with `[DONE]`).
pub async fn read_stream(resp: reqwest::Response) -> (Vec<String>, Option<i64>) {
    let text = resp.text().await.expect("stream body");
    let data = sse_data(&text);
    let credits = (data.last().map(String::as_str) == Some("[DONE]") && data.len() >= 2)
        .then(|| serde_json::from_str::<Value>(&data[data.len() - 2]).ok())
        .flatten()
        .and_then(|v| v["meta"]["usage"]["credits_used"].as_i64());
    (data, credits)
}

/// Runs one SQL query returning a BIGINT against a test database (SQLite or PostgreSQL).
pub async fn sql_int(db_url: &str, sql: &str) -> i64 {
    if db_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(db_url).await.expect("sqlite");
        let v = sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await;
        pool.close().await;
        v.unwrap_or_else(|e| panic!("{sql}: {e}"))
    } else {
        let pool = sqlx::PgPool::connect(db_url).await.expect("postgres");
        let v = sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await;
        pool.close().await;
        v.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// Runs SQL statements against a test database (SQLite or PostgreSQL).
pub async fn sql_exec(db_url: &str, statements: &[&str]) {
    if db_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(db_url).await.expect("sqlite");
        for s in statements {
            sqlx::query(s)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(db_url).await.expect("postgres");
        for s in statements {
            sqlx::query(s)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        pool.close().await;
    }
}

/// The sum of the account's `MODEL_USAGE` charges and of its usage rows' credits.
pub async fn charged(db_url: &str, email: &str) -> (i64, i64) {
    let ledger = sql_int(db_url, &format!(
        "SELECT CAST(COALESCE(SUM(l.amount), 0) AS BIGINT) FROM ledger l JOIN accounts a ON a.id = l.account_id
         WHERE a.email = '{email}' AND l.type = 'MODEL_USAGE'"
    ))
    .await;
    let rows = sql_int(db_url, &format!(
        "SELECT CAST(COALESCE(SUM(u.credits), 0) AS BIGINT) FROM usage_logs u JOIN accounts a ON a.id = u.account_id
         WHERE a.email = '{email}'"
    ))
    .await;
    (ledger, rows)
}

/// Asserts `tollgate ledger check` passes, and returns its report.
pub fn ledger_ok(db_url: &str) -> Value {
    let (ok, out, err) = cli(db_url, &["ledger", "check"]);
    assert!(ok, "ledger check failed: {out} {err}");
    out
}

/// The value of counter `name` on the server's `GET /metrics` (fetched with `client`).
pub async fn metric_with(client: &reqwest::Client, server: &Server, name: &str) -> u64 {
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no counter {name}: {text}"))
}

/// The value of counter `name` on the server's `GET /metrics`.
pub async fn metric(server: &Server, name: &str) -> u64 {
    metric_with(&client(), server, name).await
}

/// A catalogue file holding `toml`, in a directory that lives as long as the returned guard,
/// and the `TOLLGATE__CATALOG__FILES` value naming it.
pub fn catalog_file(toml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("catalog.toml");
    std::fs::write(&path, toml).expect("write the catalogue file");
    let files = format!("[\"{}\"]", path.display());
    (dir, files)
}
