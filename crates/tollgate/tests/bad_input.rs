//! Bad input gets its SPEC §6 error, and the server stays healthy.

mod common;

use common::*;
use serde_json::json;

const FREE: &str = "tollgate/demo-chat";

async fn raw(server: &Server, key: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    client()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn malformed_wrong_and_missing_fields_name_the_field() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "bad@example.com", None);

    let msg = expect_error(
        raw(&server, &key, "{\"model\": ").await,
        400,
        "body_validation",
    )
    .await;
    assert!(msg.starts_with("Body validation error"), "{msg}");
    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "field `model`: expected string, received undefined",
        ),
        (
            json!({"model": 7, "messages": [{"role": "user", "content": "x"}]}),
            "field `model`: expected string, received integer",
        ),
        (
            json!({"model": FREE}),
            "field `messages`: expected array, received undefined",
        ),
        (
            json!({"model": FREE, "messages": "hi"}),
            "field `messages`: expected array, received string",
        ),
        (
            json!({"model": FREE, "messages": [{"content": "x"}]}),
            "field `messages[0].role`: expected string, received undefined",
        ),
        (
            json!({"model": FREE, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            "field `stream`: expected boolean, received string",
        ),
        (
            json!({"model": FREE, "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
            "field `max_tokens`: expected integer >= 1, received -1",
        ),
        (
            json!({"model": FREE, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
            "field `temperature`: expected number, received string",
        ),
        (
            json!([1, 2]),
            "field `body`: expected object, received array",
        ),
    ];
    for (body, expected) in cases {
        let msg = expect_error(
            post_chat(&server, &key, &body).await,
            400,
            "body_validation",
        )
        .await;
        assert_eq!(
            msg,
            format!("Body validation error: {expected}"),
            "for {body}"
        );
    }
    let msg = expect_error(
        post_chat(
            &server,
            &key,
            &json!({"model": FREE, "messages": [{"role": "wizard", "content": "x"}]}),
        )
        .await,
        400,
        "unsupported_value",
    )
    .await;
    assert!(msg.contains("wizard"), "{msg}");
    // Nothing was held or charged by any of these.
    assert_eq!(balance(&server, &key).await["held"], 0);
    assert!(cli(&db.url, &["ledger", "check"]).0);
}

#[tokio::test]
async fn a_64_mib_body_is_refused_with_413_and_the_server_stays_healthy() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "big@example.com", None);
    let big = format!(
        "{{\"model\":\"{FREE}\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "a".repeat(64 << 20)
    );
    let resp = raw(&server, &key, big).await;
    let msg = expect_error(resp, 413, "payload_too_large").await;
    assert!(msg.contains("larger than the limit"), "{msg}");
    // A body sent without a length (chunked) is cut at the limit too.
    let chunks =
        futures::stream::iter((0..80).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1 << 20])));
    let resp = raw(&server, &key, reqwest::Body::wrap_stream(chunks)).await;
    expect_error(resp, 413, "payload_too_large").await;
    assert_eq!(
        client()
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post_chat(&server, &key, &chat_body(FREE, json!({})))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_prompt_of_one_200_kb_word_is_counted_without_holding_the_server() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "word@example.com", None);
    // BPE over one piece costs the square of its length: merged whole, this one word kept
    // a worker busy for many seconds (minutes in a debug build).
    let body =
        json!({"model": FREE, "messages": [{"role": "user", "content": "a".repeat(200_000)}]});
    let resp = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client")
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("an answer within 30 s");
    assert_eq!(resp.status(), 200);
    let reply: serde_json::Value = resp.json().await.expect("JSON");
    // o200k makes a run of `a` one token per eight letters.
    let prompt = reply["usage"]["prompt_tokens"]
        .as_u64()
        .expect("prompt tokens");
    assert!((25_000..25_100).contains(&prompt), "{prompt}");
    assert_eq!(
        post_chat(&server, &key, &chat_body(FREE, json!({})))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn unknown_models_and_routes_are_404_and_wrong_methods_405() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "unknown@example.com", None);
    let msg = expect_error(
        post_chat(&server, &key, &chat_body("no/such-model", json!({}))).await,
        404,
        "model_not_found",
    )
    .await;
    assert!(msg.contains("no/such-model"), "{msg}");
    // Aliases and case do not matter.
    assert_eq!(
        post_chat(&server, &key, &chat_body("DEMO-CHAT", json!({})))
            .await
            .status(),
        200
    );

    let resp = client()
        .get(server.url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 404, "model_not_found").await;
    let resp = client()
        .delete(server.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 405, "method_not_allowed").await;
    let resp = client()
        .get(server.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 405, "method_not_allowed").await;
}

/// Commits `sql` through a connection of its own, as another process would, and waits past
/// the server's bound for noticing such a commit (it looks for outside commits at most once
/// a millisecond, so a request within that millisecond may still see the cached key).
async fn outside_write(pool: &sqlx::SqlitePool, sql: &str) {
    sqlx::query(sql).execute(pool).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
}

#[tokio::test]
async fn a_suspended_accounts_keys_get_403_saying_so() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "suspended@example.com", None);
    let body = chat_body(FREE, json!({}));
    assert_eq!(post_chat(&server, &key, &body).await.status(), 200);
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    outside_write(&pool, "UPDATE accounts SET suspended = TRUE").await;
    let msg = expect_error(
        post_chat(&server, &key, &body).await,
        403,
        "account_suspended",
    )
    .await;
    assert!(msg.contains("suspended"), "{msg}");
    outside_write(&pool, "UPDATE accounts SET suspended = FALSE").await;
    assert_eq!(post_chat(&server, &key, &body).await.status(), 200);
}

#[tokio::test]
async fn missing_unknown_and_disabled_keys_get_401() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "keys@example.com", None);
    let body = chat_body(FREE, json!({}));

    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let msg = expect_error(resp, 401, "invalid_api_key").await;
    assert!(
        msg.starts_with("This request requires a valid API key."),
        "{msg}"
    );
    expect_error(
        post_chat(&server, "0123456789abcdef0123456789abcdef", &body).await,
        401,
        "invalid_api_key",
    )
    .await;
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "invalid_api_key").await;

    assert_eq!(post_chat(&server, &key, &body).await.status(), 200);
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    outside_write(&pool, "UPDATE api_keys SET disabled = TRUE").await;
    expect_error(
        post_chat(&server, &key, &body).await,
        401,
        "invalid_api_key",
    )
    .await;
    outside_write(
        &pool,
        "UPDATE api_keys SET disabled = FALSE, deleted_at = 1",
    )
    .await;
    expect_error(
        post_chat(&server, &key, &body).await,
        401,
        "invalid_api_key",
    )
    .await;
    assert_eq!(
        client()
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn request_heads_over_16_kib_are_refused_with_431_and_the_server_stays_healthy() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "heads@example.com", None);
    let huge = client()
        .get(server.url("/v1/models"))
        .header("x-padding", "x".repeat(20 * 1024))
        .send()
        .await
        .expect("a response, not a dropped connection");
    let msg = expect_error(huge, 431, "request_header_fields_too_large").await;
    assert!(msg.contains("larger than the limit"), "{msg}");

    // Large but within the limit is served.
    let large = client()
        .get(server.url("/v1/models"))
        .header("x-padding", "x".repeat(12 * 1024))
        .send()
        .await
        .expect("request");
    assert_eq!(large.status(), 200);
    let ok = raw(
        &server,
        &key,
        json!({"model": FREE, "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
    .await;
    assert_eq!(ok.status(), 200);
}
