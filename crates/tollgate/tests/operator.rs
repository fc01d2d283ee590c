//! Operator commands against a serving deployment: a debit never takes credits that live
//! requests hold, and the ledger check sees the live holds and audits every charge, on SQLite
//! (through the server's control socket) and on PostgreSQL.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const PRO: &str = "tollgate/demo-chat-pro";
const CARD: &str = "4242424242424242";

/// Demo streams of 100 tokens at 25 a second (4 s).
const SLOW_DEMO: [(&str, &str); 2] = [
    ("TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND", "25"),
    ("TOLLGATE__PROVIDERS__DEMO__REPLY_TOKENS", "100"),
];

fn adjust(db: &TestDb, email: &str, credits: i64) -> (bool, Value, String) {
    cli(
        &db.url,
        &[
            "credits",
            "adjust",
            "--email",
            email,
            "--credits",
            &credits.to_string(),
            "--reason",
            "operator test",
        ],
    )
}

/// Starts three streams of `PRO` for `key` and waits until they are all under way.
async fn three_streams(
    server: &Server,
    key: &str,
) -> Vec<tokio::task::JoinHandle<(Vec<String>, Option<i64>)>> {
    let mut streams = Vec::new();
    for _ in 0..3 {
        let body = chat_body(PRO, json!({"stream": true, "max_tokens": 100}));
        let resp = post_chat(server, key, &body).await;
        assert_eq!(resp.status(), 200);
        streams.push(tokio::spawn(read_stream(resp)));
    }
    streams
}

/// 50,000 credits, three streams holding about 18,600 of them: a debit of 45,000 is refused,
/// one of 20,000 is taken, and every stream still finishes and is charged in full.
async fn a_debit_never_takes_credits_live_requests_hold(db: TestDb) {
    let server = Server::start(&db.url, &SLOW_DEMO);
    let email = "debit@example.com";
    let key = account(&db.url, email, Some(CARD));
    let streams = three_streams(&server, &key).await;
    let held = balance(&server, &key).await["held"].as_i64().unwrap();
    assert!(held > 15_000, "three holds: {held}");

    let (ok, _, err) = adjust(&db, email, -45_000);
    assert!(!ok, "a debit past the held credits was accepted");
    assert!(err.contains("below zero"), "{err}");
    let (ok, out, err) = adjust(&db, email, -20_000);
    assert!(ok, "{err}");
    assert_eq!(out["balance_credits"], 30_000);

    let mut spent = 0;
    for s in streams {
        let (data, credits) = s.await.unwrap();
        let credits = credits.unwrap_or_else(|| panic!("a stream did not finish: {data:?}"));
        assert!(credits > 5_000, "charged in full: {credits}");
        spent += credits;
    }
    let b = balance(&server, &key).await;
    assert_eq!(b["balance"], 30_000 - spent);
    assert_eq!(charged(&db.url, email).await, (spent, spent));
    ledger_ok(&db.url);
}

#[tokio::test]
async fn a_debit_never_takes_credits_live_requests_hold_sqlite() {
    a_debit_never_takes_credits_live_requests_hold(TestDb::sqlite()).await;
}

#[tokio::test]
async fn a_debit_never_takes_credits_live_requests_hold_postgres() {
    a_debit_never_takes_credits_live_requests_hold(TestDb::postgres().await).await;
}

/// A deduction written behind tollgate's back (balance and ledger agree, but the balance no
/// longer covers the live holds) is found by `ledger check` run beside the server.
async fn the_ledger_check_sees_the_live_holds(db: TestDb) {
    let server = Server::start(&db.url, &SLOW_DEMO);
    let email = "holds@example.com";
    let key = account(&db.url, email, Some(CARD));
    let streams = three_streams(&server, &key).await;
    let report = ledger_ok(&db.url);
    assert_eq!(report["disagreeing_accounts"], json!([]));
    sql_exec(
        &db.url,
        &[
            &format!("INSERT INTO ledger (account_id, direction, type, amount, idempotency_key, created_at)
              SELECT id, 'CHARGE', 'ADJUSTMENT', 45000, 'behind-the-back', 0 FROM accounts WHERE email = '{email}'"),
            &format!("UPDATE accounts SET balance = balance - 45000 WHERE email = '{email}'"),
        ],
    )
    .await;
    // The server notices the outside commit within a millisecond or two.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (ok, out, _) = cli(&db.url, &["ledger", "check"]);
    assert!(
        !ok,
        "the check missed a balance below its live holds: {out}"
    );
    let bad = &out["disagreeing_accounts"][0];
    assert_eq!(bad["email"], email, "{out}");
    assert_eq!(bad["balance"], 5_000, "{out}");
    assert!(bad["held"].as_i64().unwrap() > 5_000, "{out}");
    for s in streams {
        s.await.unwrap();
    }
    // Settled within what was left: the balance never went below zero.
    assert!(balance(&server, &key).await["balance"].as_i64().unwrap() >= 0);
}

#[tokio::test]
async fn the_ledger_check_sees_the_live_holds_sqlite() {
    the_ledger_check_sees_the_live_holds(TestDb::sqlite()).await;
}

#[tokio::test]
async fn the_ledger_check_sees_the_live_holds_postgres() {
    the_ledger_check_sees_the_live_holds(TestDb::postgres().await).await;
}

/// Every usage row's charge is audited against its ledger entry and its units' price: a row
/// whose credits were changed, a charge without its row, and a row without its charge are
/// each reported.
async fn the_ledger_check_audits_every_charge(db: TestDb) {
    let server = Server::start(&db.url, &[]);
    let email = "audit@example.com";
    let key = account(&db.url, email, Some(CARD));
    for stream in [false, true, false] {
        let resp = post_chat(&server, &key, &chat_body(PRO, json!({"stream": stream}))).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let free = post_chat(&server, &key, &chat_body("tollgate/demo-chat", json!({}))).await;
    assert_eq!(free.status(), 200);
    let report = ledger_ok(&db.url);
    assert_eq!(report["usage_rows_checked"], 4, "{report}");

    sql_exec(
        &db.url,
        &[
            // A row overcharged against its ledger entry.
            "UPDATE usage_logs SET credits = credits + 7 WHERE inference_id = (SELECT MIN(inference_id) FROM usage_logs WHERE credits > 0)",
            // A row that lost its charge, and a charge that lost its row.
            "DELETE FROM ledger WHERE reference_id = (SELECT MAX(inference_id) FROM usage_logs WHERE credits > 0)",
            "INSERT INTO ledger (account_id, direction, type, amount, reference_id, idempotency_key, created_at)
             SELECT account_id, 'CHARGE', 'MODEL_USAGE', 11, 'vanished', 'usage:vanished', 0 FROM usage_logs LIMIT 1",
        ],
    )
    .await;
    let (ok, out, _) = cli(&db.url, &["ledger", "check"]);
    assert!(!ok, "{out}");
    assert_eq!(out["disagreeing_charges_total"], 2, "{out}");
    let problems: Vec<&str> = out["disagreeing_charges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["problem"].as_str().unwrap())
        .collect();
    assert!(
        problems.iter().all(|p| p.contains("ledger")),
        "{problems:?}"
    );
    assert_eq!(
        out["charges_without_usage_row"],
        json!(["vanished"]),
        "{out}"
    );
}

#[tokio::test]
async fn the_ledger_check_audits_every_charge_sqlite() {
    the_ledger_check_audits_every_charge(TestDb::sqlite()).await;
}

#[tokio::test]
async fn the_ledger_check_audits_every_charge_postgres() {
    the_ledger_check_audits_every_charge(TestDb::postgres().await).await;
}

/// With the server gone (killed), operator commands act on the SQLite file directly, and a
/// restarted server takes over its control socket again.
#[tokio::test]
async fn operator_commands_follow_the_server_across_a_crash() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let email = "crash@example.com";
    account(&db.url, email, Some(CARD));
    assert!(adjust(&db, email, -1_000).0);
    let server = {
        let mut s = server;
        let _ = s.child.kill();
        let _ = s.child.wait();
        s
    };
    let (ok, out, err) = adjust(&db, email, -1_000);
    assert!(ok, "{err}");
    assert_eq!(out["balance_credits"], 48_000);
    let server = server.restart_after_kill();
    let (ok, out, err) = adjust(&db, email, 500);
    assert!(ok, "{err}");
    assert_eq!(out["balance_credits"], 48_500);
    assert!(server
        .drain_logs()
        .iter()
        .any(|l| l.contains("operator command from the control socket")));
    ledger_ok(&db.url);
}
