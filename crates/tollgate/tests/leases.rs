//! A live request's hold is never reaped: its lease is renewed while it runs, its deadline
//! covers all its attempts, and a node id serves one process at a time. Short leases, slow
//! streams, slow readers and failover chains, on SQLite and PostgreSQL.

mod common;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_testkit::{Behaviour, FakeOpenAi};

const PRO: &str = "tollgate/demo-chat-pro";
const CARD: &str = "4242424242424242";

/// A 3-second lease swept every second.
const SHORT_LEASE: [(&str, &str); 2] = [
    ("TOLLGATE__BILLING__HOLD_LEASE_SECONDS", "3"),
    ("TOLLGATE__BILLING__REAPER_INTERVAL_SECONDS", "1"),
];

/// A demo stream of 100 tokens at 20 a second (5 s) outlives a 3-second lease: it is
/// charged in full, exactly as its reply says, and the books add up.
async fn a_stream_longer_than_its_lease_is_charged_in_full(db: TestDb) {
    let mut env = SHORT_LEASE.to_vec();
    env.extend([
        ("TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND", "20"),
        ("TOLLGATE__PROVIDERS__DEMO__REPLY_TOKENS", "100"),
    ]);
    let server = Server::start(&db.url, &env);
    let key = account(&db.url, "long@example.com", Some(CARD));
    let started = Instant::now();
    let body = chat_body(
        PRO,
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let (data, credits) = read_stream(post_chat(&server, &key, &body).await).await;
    assert!(
        started.elapsed() > Duration::from_secs(4),
        "the stream outlived the lease"
    );
    let credits = credits.unwrap_or_else(|| panic!("the stream did not finish: {data:?}"));
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    // $10 / $30 per million tokens = 20 / 60 credits per token.
    let expected = (usage["usage"]["prompt_tokens"].as_u64().unwrap() * 20_000_000
        + usage["usage"]["completion_tokens"].as_u64().unwrap() * 60_000_000)
        .div_ceil(1_000_000) as i64;
    assert_eq!(credits, expected, "{usage}");
    assert!(credits > 5_000);
    assert_eq!(
        charged(&db.url, "long@example.com").await,
        (credits, credits)
    );
    assert!(!server
        .drain_logs()
        .iter()
        .any(|l| l.contains("lease expired")));
    ledger_ok(&db.url);
}

#[tokio::test]
async fn a_stream_longer_than_its_lease_is_charged_in_full_sqlite() {
    a_stream_longer_than_its_lease_is_charged_in_full(TestDb::sqlite()).await;
}

#[tokio::test]
async fn a_stream_longer_than_its_lease_is_charged_in_full_postgres() {
    a_stream_longer_than_its_lease_is_charged_in_full(TestDb::postgres().await).await;
}

/// The free tier's one request in flight holds for as long as the request runs, past its
/// lease.
async fn the_free_tier_in_flight_limit_outlasts_the_lease(db: TestDb) {
    let mut env = SHORT_LEASE.to_vec();
    env.extend([
        ("TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND", "20"),
        ("TOLLGATE__PROVIDERS__DEMO__REPLY_TOKENS", "120"),
    ]);
    let server = Server::start(&db.url, &env);
    let key = account(&db.url, "free@example.com", None);
    let body = chat_body("tollgate/demo-chat", json!({"stream": true}));
    let first = post_chat(&server, &key, &body).await;
    assert_eq!(first.status(), 200);
    let reading = tokio::spawn(read_stream(first));
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let second = post_chat(&server, &key, &chat_body("tollgate/demo-chat", json!({}))).await;
    expect_error(second, 429, "rate_limited").await;
    let (_, credits) = reading.await.unwrap();
    assert_eq!(credits, Some(0));
}

#[tokio::test]
async fn the_free_tier_in_flight_limit_outlasts_the_lease_sqlite() {
    the_free_tier_in_flight_limit_outlasts_the_lease(TestDb::sqlite()).await;
}

#[tokio::test]
async fn the_free_tier_in_flight_limit_outlasts_the_lease_postgres() {
    the_free_tier_in_flight_limit_outlasts_the_lease(TestDb::postgres().await).await;
}

/// A client that pauses 6 s before reading a 2,000-token stream, past both the request's
/// 2-second deadline and its 3-second lease: it is charged for what it was sent, as its usage
/// row records it, never 0.
#[tokio::test]
async fn a_slow_reader_is_charged_for_what_it_was_sent() {
    let db = TestDb::sqlite();
    let fake = FakeOpenAi::start(Behaviour::normal(2_000)).await;
    let mut env = SHORT_LEASE.to_vec();
    env.push(("TOLLGATE__UPSTREAM__TOTAL_TIMEOUT_SECONDS", "2"));
    let server = Server::with_upstream(&db.url, &fake.base_url(), &env);
    let key = account(&db.url, "slow@example.com", Some(CARD));
    let body = chat_body(
        "openai/gpt-4o-mini",
        json!({"stream": true, "max_tokens": 4000}),
    );
    let resp = post_chat(&server, &key, &body).await;
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut text = String::new();
    let mut body = resp.bytes_stream();
    while let Some(piece) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&piece.unwrap()));
    }
    let (ledger, rows) = charged(&db.url, "slow@example.com").await;
    assert!(
        ledger > 0,
        "charged nothing for a delivered stream: {}",
        &text[text.len().saturating_sub(300)..]
    );
    assert_eq!(ledger, rows);
    let delivered = sql_int(&db.url, "SELECT completion_tokens FROM usage_logs").await;
    assert!(delivered > 0);
    ledger_ok(&db.url);
}

/// Three routes, of which the first two never answer: every attempt shares the request's
/// one deadline, so a chain that cannot finish in time ends at the deadline (nothing
/// charged) instead of starting a new one per attempt.
#[tokio::test]
async fn failover_attempts_share_the_request_deadline() {
    let db = TestDb::sqlite();
    let (_dir, files) = catalog_file(
        r#"
[[model]]
id = "test/chain"
type = "openai/chat-completions"
info = { name = "Chain", outputMax = 100 }
pricing = { input_tokens = "1", output_tokens = "2" }
[[model.routes]]
provider = "openai"
model = "silent-a"
priority = 20
[[model.routes]]
provider = "openai"
model = "silent-b"
priority = 10
[[model.routes]]
provider = "demo"
model = "demo-chat"
priority = 0
"#,
    );
    let fake = FakeOpenAi::start(Behaviour::normal(5)).await;
    fake.set_behaviour_for("silent-a", Behaviour::Hang);
    fake.set_behaviour_for("silent-b", Behaviour::Hang);
    let run = |total: &'static str| {
        let mut env = SHORT_LEASE.to_vec();
        env.extend([
            ("TOLLGATE__UPSTREAM__FIRST_BYTE_TIMEOUT_SECONDS", "0.6"),
            ("TOLLGATE__UPSTREAM__TOTAL_TIMEOUT_SECONDS", total),
            ("TOLLGATE__CATALOG__FILES", files.as_str()),
        ]);
        Server::with_upstream(&db.url, &fake.base_url(), &env)
    };
    let key = account(&db.url, "chain@example.com", Some(CARD));

    // Time enough for both misses: the third route answers and is charged.
    let server = run("5");
    let resp = post_chat(
        &server,
        &key,
        &chat_body("test/chain", json!({"stream": true})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let (_, credits) = read_stream(resp).await;
    assert!(credits.unwrap() > 0);
    drop(server);

    // One second for the whole chain: it ends at the deadline, unanswered and unpaid.
    let server = run("1");
    let started = Instant::now();
    let resp = post_chat(&server, &key, &chat_body("test/chain", json!({}))).await;
    let took = started.elapsed();
    expect_error(resp, 504, "generation_timeout").await;
    assert!(took < Duration::from_millis(1_600), "took {took:?}");
    let (ledger, rows) = charged(&db.url, "chain@example.com").await;
    assert_eq!(ledger, rows);
    assert_eq!(
        sql_int(
            &db.url,
            "SELECT COUNT(*) FROM usage_logs WHERE status = 'failed' AND credits = 0"
        )
        .await,
        1
    );
    ledger_ok(&db.url);
}

/// Two PostgreSQL nodes configured with the same node id: the second is refused at start,
/// and the first's live stream is charged in full.
#[tokio::test]
async fn a_second_node_with_the_same_id_is_refused() {
    let db = TestDb::postgres().await;
    let env = [
        ("TOLLGATE__NODE__ID", "shared"),
        ("TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND", "40"),
        ("TOLLGATE__PROVIDERS__DEMO__REPLY_TOKENS", "60"),
    ];
    let first = Server::start(&db.url, &env);
    let key = account(&db.url, "node@example.com", Some(CARD));
    let body = chat_body(PRO, json!({"stream": true}));
    let resp = post_chat(&first, &key, &body).await;
    assert_eq!(resp.status(), 200);
    let reading = tokio::spawn(read_stream(resp));
    let refused = serve_refused(&db.url, &env);
    assert!(refused.contains("node id `shared`"), "{refused}");
    let (_, credits) = reading.await.unwrap();
    let credits = credits.expect("the first node's stream finished");
    assert!(credits > 0);
    assert_eq!(
        charged(&db.url, "node@example.com").await,
        (credits, credits)
    );
    // Another id is welcome beside it.
    let second = Server::start(&db.url, &[("TOLLGATE__NODE__ID", "other")]);
    assert_eq!(balance(&second, &key).await["balance"], 50_000 - credits);
    ledger_ok(&db.url);
}
