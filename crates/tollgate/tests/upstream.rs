//! Requests through the OpenAI-compatible adapter to a fake upstream: pricing from upstream
//! usage, and every failure charged correctly (never for nothing, partly for a cut stream).

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_testkit::{closed_port_url, Behaviour, FakeOpenAi};

const MINI: &str = "openai/gpt-4o-mini";

/// gpt-4o-mini: $0.15 / $0.60 per million tokens = 300,000 / 1,200,000 credits per million.
fn mini_cost(prompt: i64, completion: i64) -> i64 {
    (prompt * 300_000 + completion * 1_200_000 + 999_999) / 1_000_000
}

fn start(db: &TestDb, upstream_url: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("TOLLGATE__UPSTREAM__FIRST_BYTE_TIMEOUT_SECONDS", "0.5"),
        ("TOLLGATE__UPSTREAM__TOTAL_TIMEOUT_SECONDS", "1.5"),
    ];
    env.extend_from_slice(extra);
    Server::with_upstream(&db.url, upstream_url, &env)
}

async fn models(server: &Server) -> Vec<String> {
    let body: Value = client()
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn usage_rows(db: &TestDb) -> Vec<(String, Option<String>, i64)> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    sqlx::query_as("SELECT status, error_code, credits FROM usage_logs ORDER BY created_at")
        .fetch_all(&pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn openai_models_are_listed_only_with_a_key() {
    let db = TestDb::sqlite();
    let without = Server::start(&db.url, &[]);
    assert!(!models(&without).await.contains(&MINI.to_owned()));
    drop(without);
    let fake = FakeOpenAi::start(Behaviour::normal(5)).await;
    let with = start(&db, &fake.base_url(), &[]);
    let ids = models(&with).await;
    assert!(
        ids.contains(&MINI.to_owned()) && ids.contains(&"tollgate/demo-chat".to_owned()),
        "{ids:?}"
    );
}

#[tokio::test]
async fn a_completion_is_charged_from_upstream_usage_and_forwarded_correctly() {
    let db = TestDb::sqlite();
    let fake = FakeOpenAi::start(Behaviour::normal(7)).await;
    let server = start(&db, &fake.base_url(), &[]);
    let key = account(&db.url, "up@example.com", Some("4242424242424242"));

    let resp = post_chat(
        &server,
        &key,
        &chat_body("gpt-4o-mini", json!({"max_tokens": 100})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let (p, c) = (
        body["usage"]["prompt_tokens"].as_i64().unwrap(),
        body["usage"]["completion_tokens"].as_i64().unwrap(),
    );
    assert_eq!(c, 7);
    assert_eq!(body["model"], MINI);
    assert_eq!(body["meta"]["usage"]["credits_used"], mini_cost(p, c));
    let sent = &fake.requests()[0];
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["max_tokens"], 100);
    assert_eq!(
        fake.authorizations()[0].as_deref(),
        Some("Bearer sk-upstream-test")
    );

    // Streaming: usage is always requested upstream, but only shown if the client asked.
    let resp = post_chat(&server, &key, &chat_body(MINI, json!({"stream": true}))).await;
    let data = sse_data(&resp.text().await.unwrap());
    assert_eq!(fake.requests()[1]["stream_options"]["include_usage"], true);
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(last.get("usage").is_none(), "{last}");
    let charged = last["meta"]["usage"]["credits_used"].as_i64().unwrap();
    assert_eq!(charged, mini_cost(p, 7));
    assert!(data
        .iter()
        .all(|d| !d.contains("\"usage\"") || d == &data[data.len() - 2]));
    let b = balance(&server, &key).await;
    assert_eq!(b["balance"], 50_000 - 2 * mini_cost(p, 7));
    assert!(cli(&db.url, &["ledger", "check"]).0);
}

#[tokio::test]
async fn upstream_failures_are_not_charged_and_map_to_gateway_errors() {
    let db = TestDb::sqlite();
    let fake = FakeOpenAi::start(Behaviour::server_error("upstream exploded")).await;
    let server = start(&db, &fake.base_url(), &[]);
    let key = account(&db.url, "fail@example.com", Some("4242424242424242"));
    let body = chat_body(MINI, json!({}));

    expect_error(post_chat(&server, &key, &body).await, 502, "bad_gateway").await;
    fake.set_behaviour(Behaviour::rate_limited(7));
    let resp = post_chat(&server, &key, &body).await;
    assert_eq!(resp.headers()["retry-after"], "7");
    expect_error(resp, 429, "rate_limited").await;
    fake.set_behaviour(Behaviour::invalid_request("max_tokens is too large"));
    let msg = expect_error(
        post_chat(&server, &key, &body).await,
        400,
        "unsupported_value",
    )
    .await;
    assert!(msg.contains("max_tokens is too large"), "{msg}");
    fake.set_behaviour(Behaviour::NotJson);
    expect_error(post_chat(&server, &key, &body).await, 502, "bad_gateway").await;
    // Bodies with no end: refused once past the size limit, long before the total deadline.
    fake.set_behaviour(Behaviour::EndlessBody { status: 200 });
    let started = Instant::now();
    expect_error(post_chat(&server, &key, &body).await, 502, "bad_gateway").await;
    fake.set_behaviour(Behaviour::EndlessEvent);
    let endless_stream = chat_body(MINI, json!({"stream": true}));
    expect_error(
        post_chat(&server, &key, &endless_stream).await,
        502,
        "bad_gateway",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    fake.set_behaviour(Behaviour::Hang);
    let started = Instant::now();
    let msg = expect_error(
        post_chat(&server, &key, &body).await,
        504,
        "generation_timeout",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(msg.contains("nothing was charged"));
    let stream = chat_body(MINI, json!({"stream": true}));
    expect_error(
        post_chat(&server, &key, &stream).await,
        504,
        "generation_timeout",
    )
    .await;

    let b = balance(&server, &key).await;
    assert_eq!(
        (b["balance"].clone(), b["held"].clone()),
        (json!(50_000), json!(0))
    );
    let rows = usage_rows(&db).await;
    assert_eq!(rows.len(), 8);
    assert!(
        rows.iter()
            .all(|(status, code, credits)| status == "failed" && code.is_some() && *credits == 0),
        "{rows:?}"
    );
    assert!(cli(&db.url, &["ledger", "check"]).0);
}

#[tokio::test]
async fn a_refused_connection_is_503_and_not_charged() {
    let db = TestDb::sqlite();
    let server = start(&db, &closed_port_url(), &[]);
    let key = account(&db.url, "refused@example.com", Some("4242424242424242"));
    expect_error(
        post_chat(&server, &key, &chat_body(MINI, json!({}))).await,
        503,
        "service_unavailable",
    )
    .await;
    expect_error(
        post_chat(&server, &key, &chat_body(MINI, json!({"stream": true}))).await,
        503,
        "service_unavailable",
    )
    .await;
    assert_eq!(balance(&server, &key).await["balance"], 50_000);
}

#[tokio::test]
async fn a_stream_cut_by_the_upstream_is_charged_for_what_was_delivered() {
    let db = TestDb::sqlite();
    let fake = FakeOpenAi::start(Behaviour::CutAfter { chunks: 3 }).await;
    let server = start(&db, &fake.base_url(), &[]);
    let key = account(&db.url, "cut@example.com", Some("4242424242424242"));
    let resp = post_chat(&server, &key, &chat_body(MINI, json!({"stream": true}))).await;
    assert_eq!(resp.status(), 200);
    let data = sse_data(&resp.text().await.unwrap());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "bad_gateway", "{data:?}");
    assert!(!data.contains(&"[DONE]".to_owned()));
    let b = balance(&server, &key).await;
    let charged = 50_000 - b["balance"].as_i64().unwrap();
    assert_eq!(b["held"], 0);
    // The prompt, counted locally (~12 tokens), plus 3 delivered tokens.
    assert!(
        charged >= mini_cost(8, 3) && charged <= mini_cost(20, 3),
        "charged {charged}"
    );

    // A stream that stalls after some output ends at the total timeout, charged the same way.
    fake.set_behaviour(Behaviour::HangAfter { chunks: 2 });
    let resp = post_chat(&server, &key, &chat_body(MINI, json!({"stream": true}))).await;
    let data = sse_data(&resp.text().await.unwrap());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "generation_timeout", "{data:?}");
    let rows = usage_rows(&db).await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|(status, _, credits)| status == "succeeded" && *credits > 0),
        "{rows:?}"
    );
    assert!(cli(&db.url, &["ledger", "check"]).0);
}

#[tokio::test]
async fn missing_usage_is_counted_locally_and_inflated_usage_never_overdraws() {
    let db = TestDb::sqlite();
    let fake = FakeOpenAi::start(Behaviour::NoUsage).await;
    let server = start(&db, &fake.base_url(), &[]);
    let key = account(&db.url, "usage@example.com", Some("4242424242424242"));
    let resp = post_chat(&server, &key, &chat_body(MINI, json!({}))).await;
    let body: Value = resp.json().await.unwrap();
    let charged = body["meta"]["usage"]["credits_used"].as_i64().unwrap();
    assert!(
        charged >= mini_cost(8, 5) && charged <= mini_cost(20, 5),
        "charged {charged}"
    );

    // An upstream claiming far more output than allowed: charged, but never below zero.
    fake.set_behaviour(Behaviour::LieUsage {
        completion_tokens: 1_000_000,
    });
    let resp = post_chat(&server, &key, &chat_body(MINI, json!({"max_tokens": 10}))).await;
    assert_eq!(resp.status(), 200);
    let b = balance(&server, &key).await;
    assert_eq!(b["balance"], 0);
    assert!(server
        .drain_logs()
        .iter()
        .any(|l| l.contains("more output than allowed")));
    assert!(cli(&db.url, &["ledger", "check"]).0);
}

#[tokio::test]
async fn a_failing_route_fails_over_to_the_next_one() {
    let db = TestDb::sqlite();
    let (_dir, files) = catalog_file(
        r#"
[[model]]
id = "test/failover"
type = "openai/chat-completions"
info = { name = "Failover", outputMax = 100 }
pricing = { input_tokens = "1", output_tokens = "2" }
[[model.routes]]
provider = "openai"
model = "primary"
priority = 10
[[model.routes]]
provider = "demo"
model = "demo-chat"
priority = 0
"#,
    );
    let fake = FakeOpenAi::start(Behaviour::server_error("down")).await;
    let server = start(
        &db,
        &fake.base_url(),
        &[("TOLLGATE__CATALOG__FILES", &files)],
    );
    let key = account(&db.url, "failover@example.com", Some("4242424242424242"));
    let resp = post_chat(&server, &key, &chat_body("test/failover", json!({}))).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("Demo reply"));
    assert_eq!(fake.request_count(), 1);
}

/// An upstream that ignores `max_tokens` and reports no usage: the local count of what it
/// sent is an estimate, charged up to the hold and never past it, so the key's spending
/// limit holds too.
#[tokio::test]
async fn an_estimate_past_the_hold_is_charged_the_hold_and_keeps_the_key_limit() {
    let db = TestDb::sqlite();
    let fake = FakeOpenAi::start(Behaviour::Overlong { reply_tokens: 300 }).await;
    let server = start(&db, &fake.base_url(), &[]);
    let key = account(&db.url, "estimate@example.com", Some("4242424242424242"));
    // Room for one request with 10 output tokens (a hold of about 17 credits), not two.
    sql_exec(
        &db.url,
        &["UPDATE api_keys SET limit_retention = 'no_reset', limit_threshold = 20"],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    for stream in [false, true] {
        let body = chat_body(MINI, json!({"max_tokens": 10, "stream": stream}));
        let resp = post_chat(&server, &key, &body).await;
        if stream {
            // The first request spent the limit's room for this one's prompt and more.
            expect_error(resp, 403, "key_limit_reached").await;
            continue;
        }
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        let credits = body["meta"]["usage"]["credits_used"].as_i64().unwrap();
        assert!(
            credits <= 20,
            "an estimate charged past the hold: {credits}"
        );
        assert!(
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .split(' ')
                .count()
                > 200,
            "the upstream sent its overlong reply"
        );
    }
    let spent = sql_int(&db.url, "SELECT limit_spent FROM api_keys").await;
    assert!(spent <= 20, "the key went past its limit: {spent}");
    assert_eq!(
        sql_int(
            &db.url,
            "SELECT COUNT(*) FROM usage_logs WHERE charge_capped = 'hold'"
        )
        .await,
        1
    );
    assert!(!server
        .drain_logs()
        .iter()
        .any(|l| l.contains("more output than allowed")));
    ledger_ok(&db.url);
}

/// An upstream that reports more output than allowed on every reply: each is counted, and the
/// log gets one line a minute for the model and provider, not one per reply.
#[tokio::test]
async fn overages_are_counted_and_logged_once_per_interval() {
    let db = TestDb::sqlite();
    let fake = FakeOpenAi::start(Behaviour::LieUsage {
        completion_tokens: 20,
    })
    .await;
    let server = start(&db, &fake.base_url(), &[]);
    let key = account(&db.url, "flood@example.com", Some("4242424242424242"));
    for _ in 0..40 {
        let resp = post_chat(&server, &key, &chat_body(MINI, json!({"max_tokens": 10}))).await;
        assert_eq!(resp.status(), 200);
    }
    let lines = server
        .drain_logs()
        .into_iter()
        .filter(|l| l.contains("more output than allowed"))
        .count();
    assert_eq!(lines, 1);
    assert_eq!(
        metric(&server, "tollgate_upstream_overages_total").await,
        40
    );
    ledger_ok(&db.url);
}

/// An upstream whose error messages echo its credential: the tenant gets the provider's
/// message with the secret taken out, and neither the key nor anything shaped like one
/// reaches the log, on errors passed on, failed-over or cut mid-stream.
#[tokio::test]
async fn upstream_errors_that_echo_a_credential_are_redacted_everywhere() {
    let db = TestDb::sqlite();
    let echo = "Incorrect API key provided: sk-upstream-test. Also seen: Bearer sk-upstream-test, sk-proj-Zx81Qw93Er55Ty20.";
    let fake = FakeOpenAi::start(Behaviour::invalid_request(echo)).await;
    let server = start(&db, &fake.base_url(), &[]);
    let key = account(&db.url, "echo@example.com", Some("4242424242424242"));
    let resp = post_chat(&server, &key, &chat_body(MINI, json!({}))).await;
    let msg = expect_error(resp, 400, "unsupported_value").await;
    assert!(msg.contains("Incorrect API key provided: *****."), "{msg}");
    for leaked in ["sk-upstream-test", "sk-proj-Zx81Qw93Er55Ty20"] {
        assert!(!msg.contains(leaked), "{msg}");
    }
    // A 429 echoing the key is logged as the route fails.
    fake.set_behaviour(Behaviour::Error {
        status: 429,
        body: json!({"error": {"message": format!("Rate limit for key {}", "sk-upstream-test")}})
            .to_string(),
        retry_after: Some(1),
    });
    let resp = post_chat(&server, &key, &chat_body(MINI, json!({}))).await;
    expect_error(resp, 429, "rate_limited").await;
    let logs = server.drain_logs();
    assert!(logs.iter().any(|l| l.contains("route failed")), "{logs:?}");
    for line in &logs {
        assert!(
            !line.contains("sk-upstream-test") && !line.contains("sk-proj-"),
            "{line}"
        );
    }
}

/// The serve log names its database without the credentials in its URL.
#[tokio::test]
async fn the_serve_log_shows_urls_without_credentials() {
    let db = TestDb::sqlite();
    let url = format!("{}?password=hunter2", db.url);
    let server = Server::start(&url, &[]);
    let logs = server.drain_logs().join("\n");
    assert!(logs.contains("password=*****"), "{logs}");
    assert!(!logs.contains("hunter2"), "{logs}");
}
