//! Money invariants under concurrency, disconnects, crashes and shutdown, on SQLite and on
//! PostgreSQL shared by two nodes.

mod common;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

const PRO: &str = "tollgate/demo-chat-pro";

/// Credits charged by one response: the JSON `meta.usage`, or the last SSE chunk's.
async fn credits_of(resp: reqwest::Response, stream: bool) -> i64 {
    if stream {
        let text = resp.text().await.unwrap();
        let data = sse_data(&text);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
        let meta: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        meta["meta"]["usage"]["credits_used"].as_i64().unwrap()
    } else {
        let body: Value = resp.json().await.unwrap();
        body["meta"]["usage"]["credits_used"].as_i64().unwrap()
    }
}

async fn wait_settled(server: &Server, key: &str) -> Value {
    for _ in 0..200 {
        let b = balance(server, key).await;
        if b["held"] == 0 {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("holds were never released");
}

/// 100 concurrent requests (half streaming) against an account that affords about 20.
async fn hundred_concurrent_requests(db: &TestDb, servers: &[Server]) {
    let key = account(&db.url, "race@example.com", Some("4242424242424242"));
    // One request costs about 3,840 credits (prompt ~12 tokens × 20 + 60 output × 60).
    cli_ok(
        &db.url,
        &[
            "credits",
            "grant",
            "--email",
            "race@example.com",
            "--credits",
            "26800",
            "--reason",
            "race test",
        ],
    );
    let start = balance(&servers[0], &key).await["balance"]
        .as_i64()
        .unwrap();
    assert_eq!(start, 76_800);

    let requests = (0..100).map(|i| {
        let server = &servers[i % servers.len()];
        let key = key.clone();
        async move {
            let stream = i % 2 == 0;
            let body = chat_body(PRO, json!({"max_tokens": 60, "stream": stream}));
            let resp = post_chat(server, &key, &body).await;
            match resp.status().as_u16() {
                200 => Some(credits_of(resp, stream).await),
                403 => {
                    expect_error(resp, 403, "credits_exhausted").await;
                    None
                }
                other => panic!("unexpected status {other}: {}", resp.text().await.unwrap()),
            }
        }
    });
    let results: Vec<Option<i64>> = futures::future::join_all(requests).await;
    let charged: i64 = results.iter().flatten().sum();
    let served = results.iter().flatten().count();
    let after = wait_settled(&servers[0], &key).await;
    let end = after["balance"].as_i64().unwrap();
    assert!(end >= 0, "balance went negative: {end}");
    assert_eq!(
        start - end,
        charged,
        "credits reported in responses must add up to what left the balance"
    );
    assert!(
        (15..=25).contains(&served),
        "{served} requests were served from credits for about 20"
    );
    assert!(results.iter().flatten().all(|c| *c > 0));
    let (ok, report, err) = cli(&db.url, &["ledger", "check"]);
    assert!(ok, "ledger check failed: {report} {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_never_overspend_on_sqlite() {
    let db = TestDb::sqlite();
    let server = Server::start(
        &db.url,
        &[("TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND", "300")],
    );
    hundred_concurrent_requests(&db, &[server]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_never_overspend_across_two_postgres_nodes() {
    let db = TestDb::postgres().await;
    let env = [("TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND", "300")];
    let servers = [Server::start(&db.url, &env), Server::start(&db.url, &env)];
    hundred_concurrent_requests(&db, &servers).await;
}

#[tokio::test]
async fn a_client_dropping_a_stream_is_charged_for_what_was_delivered() {
    let db = TestDb::sqlite();
    let server = Server::start(
        &db.url,
        &[("TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND", "20")],
    );
    let key = account(&db.url, "drop@example.com", Some("4242424242424242"));
    let resp = post_chat(
        &server,
        &key,
        &chat_body(PRO, json!({"stream": true, "max_tokens": 60})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while sse_data(&text).len() < 11 {
        text.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    drop(body);
    // One role chunk, then one token per chunk.
    let received = sse_data(&text).len() as i64 - 1;
    let after = wait_settled(&server, &key).await;
    let charged = 50_000 - after["balance"].as_i64().unwrap();
    // The prompt (about 12 tokens × 20 credits) plus 60 credits per delivered token.
    let output_charged = charged - 20 * 12;
    assert!(
        output_charged >= (received - 2) * 60 && output_charged <= (received + 4) * 60,
        "charged {charged} for {received} delivered tokens"
    );
    assert!(
        charged < 20 * 12 + 60 * 60,
        "a cut stream must not be charged in full"
    );
    assert!(cli(&db.url, &["ledger", "check"]).0);
}

/// A streaming request holds credits; the process is killed with the stream open. On
/// PostgreSQL the hold row outlives the process and the restarting node releases it (and
/// says so); on SQLite the hold lived in the killed process and is gone with it. Either way
/// nothing is charged and the books add up.
async fn a_killed_process_leaves_no_charge_and_no_hold(db: TestDb) {
    let server = Server::start(
        &db.url,
        &[("TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND", "5")],
    );
    let key = account(&db.url, "crash@example.com", Some("4242424242424242"));
    let resp = post_chat(&server, &key, &chat_body(PRO, json!({"stream": true}))).await;
    assert_eq!(resp.status(), 200);
    let held = balance(&server, &key).await["held"].as_i64().unwrap();
    assert!(held > 0);
    let server = server.restart_after_kill();
    drop(resp);
    let b = balance(&server, &key).await;
    assert_eq!(
        (b["balance"].clone(), b["held"].clone()),
        (json!(50_000), json!(0)),
        "{b}"
    );
    let released_log = server
        .drain_logs()
        .iter()
        .any(|l| l.contains("released holds left by this node"));
    assert_eq!(released_log, db.url.starts_with("postgres"));
    assert!(cli(&db.url, &["ledger", "check"]).0);
}

#[tokio::test]
async fn a_killed_process_leaves_no_charge_and_no_hold_on_sqlite() {
    a_killed_process_leaves_no_charge_and_no_hold(TestDb::sqlite()).await;
}

#[tokio::test]
async fn a_hold_left_by_a_killed_node_is_released_at_restart_on_postgres() {
    a_killed_process_leaves_no_charge_and_no_hold(TestDb::postgres().await).await;
}

#[tokio::test]
async fn a_second_process_cannot_serve_the_same_sqlite_database() {
    let db = TestDb::sqlite();
    let first = Server::start(&db.url, &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "--database-url",
            &db.url,
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .expect("run a second tollgate");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already serving"), "{stderr}");
    // The first keeps serving.
    let key = account(&db.url, "one@example.com", Some("4242424242424242"));
    assert_eq!(balance(&first, &key).await["balance"], 50_000);
}

#[tokio::test]
async fn expired_holds_fail_the_ledger_check_until_the_reaper_releases_them() {
    let db = TestDb::sqlite();
    let key = account(&db.url, "lease@example.com", Some("4242424242424242"));
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    // A hold from a node that died long ago.
    sqlx::query("INSERT INTO holds (id, account_id, key_id, key_limited, node_id, amount, created_at, lease_until) SELECT 'ghost', id, 'k', FALSE, 'gone-node', 700, 1, 2 FROM accounts")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE accounts SET held = held + 700")
        .execute(&pool)
        .await
        .unwrap();
    let (ok, report, _) = cli(&db.url, &["ledger", "check"]);
    assert!(!ok);
    assert_eq!(
        report["disagreeing_accounts"][0]["email"],
        "lease@example.com"
    );
    assert_eq!(report["disagreeing_accounts"][0]["expired_holds"], 1);

    let server = Server::start(
        &db.url,
        &[("TOLLGATE__BILLING__REAPER_INTERVAL_SECONDS", "1")],
    );
    let b = wait_settled(&server, &key).await;
    assert_eq!(b["balance"], 50_000);
    assert!(cli(&db.url, &["ledger", "check"]).0);
}

#[tokio::test]
async fn the_ledger_check_names_an_account_whose_balance_was_tampered_with() {
    let db = TestDb::sqlite();
    account(&db.url, "tamper@example.com", Some("4242424242424242"));
    assert!(cli(&db.url, &["ledger", "check"]).0);
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE accounts SET balance = balance + 1")
        .execute(&pool)
        .await
        .unwrap();
    let (ok, report, err) = cli(&db.url, &["ledger", "check"]);
    assert!(!ok, "{err}");
    assert_eq!(report["disagreeing_accounts"][0]["balance"], 50_001);
    assert_eq!(report["disagreeing_accounts"][0]["ledger_sum"], 50_000);
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_stream_finish_and_settle() {
    let db = TestDb::sqlite();
    let server = Server::start(
        &db.url,
        &[("TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND", "40")],
    );
    let key = account(&db.url, "term@example.com", Some("4242424242424242"));
    let resp = post_chat(
        &server,
        &key,
        &chat_body(PRO, json!({"stream": true, "max_tokens": 40})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let base = server.base.clone();
    let status = tokio::task::spawn_blocking(move || server.terminate());
    let charged = credits_of(resp, true).await;
    assert!(status.await.unwrap().success());
    assert!(
        client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "the server should be gone"
    );
    // The charge was committed before the last chunk: the ledger has it.
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    let spent: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE type = 'MODEL_USAGE'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(spent, charged);
    assert!(cli(&db.url, &["ledger", "check"]).0);
}
