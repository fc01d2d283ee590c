//! Charges and their usage rows survive what goes wrong: a kill -9 right after a burst, a
//! settlement whose database write fails, and a shutdown that cuts streams, on SQLite and
//! PostgreSQL.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const PRO: &str = "tollgate/demo-chat-pro";
const CARD: &str = "4242424242424242";

/// SQL that makes every `MODEL_USAGE` ledger insert fail, and SQL that undoes it.
fn usage_charge_fault(db: &TestDb) -> (Vec<&'static str>, Vec<&'static str>) {
    if db.url.starts_with("sqlite:") {
        (
            vec![
                "CREATE TRIGGER fail_usage BEFORE INSERT ON ledger WHEN NEW.type = 'MODEL_USAGE'
                  BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
            ],
            vec!["DROP TRIGGER fail_usage"],
        )
    } else {
        (
            vec![
                "CREATE FUNCTION fail_usage() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER fail_usage BEFORE INSERT ON ledger FOR EACH ROW WHEN (NEW.type = 'MODEL_USAGE') EXECUTE FUNCTION fail_usage()",
            ],
            vec!["DROP TRIGGER fail_usage ON ledger", "DROP FUNCTION fail_usage()"],
        )
    }
}

/// 300 requests, every one answered, then kill -9 at once: each charge has its usage row.
async fn a_burst_killed_at_once_keeps_every_usage_row(db: TestDb) {
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "burst@example.com", Some(CARD));
    cli_ok(
        &db.url,
        &[
            "credits",
            "grant",
            "--email",
            "burst@example.com",
            "--credits",
            "5000000",
            "--reason",
            "burst",
        ],
    );
    let body = chat_body(PRO, json!({"max_tokens": 20}));
    let client = client();
    let mut answered = 0;
    for _ in 0..10 {
        let batch = (0..30).map(|_| {
            client
                .post(server.url("/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&body)
                .send()
        });
        for resp in futures::future::join_all(batch).await {
            let resp = resp.unwrap();
            assert_eq!(resp.status(), 200);
            let v: Value = resp.json().await.unwrap();
            assert!(v["meta"]["usage"]["credits_used"].as_i64().unwrap() > 0);
            answered += 1;
        }
    }
    let mut server = server;
    let _ = server.child.kill();
    let _ = server.child.wait();
    assert_eq!(answered, 300);
    let charges = sql_int(
        &db.url,
        "SELECT COUNT(*) FROM ledger WHERE type = 'MODEL_USAGE'",
    )
    .await;
    let rows = sql_int(
        &db.url,
        "SELECT COUNT(*) FROM usage_logs WHERE status = 'succeeded' AND credits > 0",
    )
    .await;
    assert_eq!((charges, rows), (300, 300));
    let (ledger, logged) = charged(&db.url, "burst@example.com").await;
    assert_eq!(ledger, logged);
    ledger_ok(&db.url);
}

#[tokio::test]
async fn a_burst_killed_at_once_keeps_every_usage_row_sqlite() {
    a_burst_killed_at_once_keeps_every_usage_row(TestDb::sqlite()).await;
}

#[tokio::test]
async fn a_burst_killed_at_once_keeps_every_usage_row_postgres() {
    a_burst_killed_at_once_keeps_every_usage_row(TestDb::postgres().await).await;
}

/// The database refuses the charge for a while: the delivered stream and the waiting
/// non-stream reply are settled once it accepts again, exactly once, and their clients get
/// their replies, not an error.
async fn a_failing_settlement_is_retried_until_it_lands(db: TestDb) {
    let server = Server::start(
        &db.url,
        &[("TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND", "100")],
    );
    let email = "retry@example.com";
    let key = account(&db.url, email, Some(CARD));
    let (fail, heal) = usage_charge_fault(&db);
    sql_exec(&db.url, &fail).await;
    let stream = post_chat(
        &server,
        &key,
        &chat_body(PRO, json!({"stream": true, "max_tokens": 30})),
    )
    .await;
    assert_eq!(stream.status(), 200);
    let stream = tokio::spawn(read_stream(stream));
    let (server_url, key2) = (server.url("/v1/chat/completions"), key.clone());
    let whole = tokio::spawn(async move {
        client()
            .post(server_url)
            .bearer_auth(key2)
            .json(&chat_body(PRO, json!({"max_tokens": 30})))
            .send()
            .await
            .unwrap()
    });
    // Both replies are done upstream and waiting for their charge.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        !stream.is_finished() && !whole.is_finished(),
        "settled despite the fault"
    );
    sql_exec(&db.url, &heal).await;
    let (data, streamed) = stream.await.unwrap();
    let streamed = streamed.unwrap_or_else(|| panic!("the stream did not finish: {data:?}"));
    let whole = whole.await.unwrap();
    assert_eq!(whole.status(), 200);
    let whole: Value = whole.json().await.unwrap();
    let whole = whole["meta"]["usage"]["credits_used"].as_i64().unwrap();
    assert!(streamed > 0 && whole > 0);
    assert_eq!(
        charged(&db.url, email).await,
        (streamed + whole, streamed + whole)
    );
    assert!(metric(&server, "tollgate_settlement_failures_total").await >= 2);
    ledger_ok(&db.url);
}

#[tokio::test]
async fn a_failing_settlement_is_retried_until_it_lands_sqlite() {
    a_failing_settlement_is_retried_until_it_lands(TestDb::sqlite()).await;
}

#[tokio::test]
async fn a_failing_settlement_is_retried_until_it_lands_postgres() {
    a_failing_settlement_is_retried_until_it_lands(TestDb::postgres().await).await;
}

/// A stream still running when shutdown's grace period ends is cut by the server: charged
/// for what it delivered, and logged as `server_shutdown`, not as the client's doing.
#[tokio::test]
async fn streams_cut_at_shutdown_are_logged_as_the_servers_doing() {
    let db = TestDb::sqlite();
    let server = Server::start(
        &db.url,
        &[
            ("TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND", "10"),
            ("TOLLGATE__PROVIDERS__DEMO__REPLY_TOKENS", "200"),
            ("TOLLGATE__SERVER__SHUTDOWN_GRACE_SECONDS", "1"),
        ],
    );
    let key = account(&db.url, "cut@example.com", Some(CARD));
    let resp = post_chat(&server, &key, &chat_body(PRO, json!({"stream": true}))).await;
    assert_eq!(resp.status(), 200);
    let reading = tokio::spawn(async move { resp.bytes().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success());
    let _ = reading.await;
    let code = sql_int(
        &db.url,
        "SELECT COUNT(*) FROM usage_logs WHERE error_code = 'server_shutdown' AND credits > 0",
    )
    .await;
    assert_eq!(code, 1);
    let (ledger, rows) = charged(&db.url, "cut@example.com").await;
    assert!(ledger > 0);
    assert_eq!(ledger, rows);
    ledger_ok(&db.url);
}
