//! Tier rules over real HTTP: free models only on `free`, the one-time grant, exhaustion.

mod common;

use common::*;
use serde_json::{json, Value};

const PRO: &str = "tollgate/demo-chat-pro";
const FREE: &str = "tollgate/demo-chat";
const BILLING_URL: &str = "https://billing.example.test/account/billing";

#[tokio::test]
async fn free_account_calls_free_models_and_gets_403_on_priced_ones() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "free@example.com", None);

    let resp = post_chat(&server, &key, &chat_body(FREE, json!({}))).await;
    assert_eq!(resp.status(), 200);
    let inference_id = resp.headers()["x-inference-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(inference_id.len(), 21);
    assert_eq!(resp.headers()["x-tollgate-credits-used"], "0");
    assert_eq!(resp.headers()["x-tollgate-usd-spent"], "0");
    let exposed = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for h in [
        "x-inference-id",
        "x-client-request-id",
        "x-tollgate-credits-used",
        "x-tollgate-usd-spent",
        "server-timing",
    ] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["meta"]["usage"],
        json!({"credits_used": 0, "usd_spent": 0})
    );
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let msg = expect_error(
        post_chat(&server, &key, &chat_body(PRO, json!({}))).await,
        403,
        "tier_model_forbidden",
    )
    .await;
    assert!(
        msg.contains("not available on the free tier") && msg.contains("Add a billing method"),
        "{msg}"
    );
    assert_eq!(balance(&server, &key).await["balance"], 0);
}

#[tokio::test]
async fn free_tier_output_is_clamped_to_512_tokens_not_refused() {
    let db = TestDb::sqlite();
    let server = Server::start(
        &db.url,
        &[("TOLLGATE__PROVIDERS__DEMO__REPLY_TOKENS", "2000")],
    );
    let key = account(&db.url, "clamp@example.com", None);
    let resp = post_chat(&server, &key, &chat_body(FREE, json!({"max_tokens": 5000}))).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 512, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn free_tier_refuses_image_attachments() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "img@example.com", None);
    let body = json!({"model": FREE, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    ]}]});
    let msg = expect_error(
        post_chat(&server, &key, &body).await,
        400,
        "unsupported_value",
    )
    .await;
    assert!(
        msg.contains("Image attachments") && msg.contains("free tier"),
        "{msg}"
    );
}

#[tokio::test]
async fn free_tier_hourly_limit_gives_429_with_retry_after() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[("TOLLGATE__FREE_TIER__HOURLY_REQUESTS", "3")]);
    let key = account(&db.url, "hourly@example.com", None);
    for _ in 0..3 {
        assert_eq!(
            post_chat(&server, &key, &chat_body(FREE, json!({})))
                .await
                .status(),
            200
        );
    }
    let resp = post_chat(&server, &key, &chat_body(FREE, json!({}))).await;
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3000..=3600).contains(&retry), "retry-after {retry}");
    let msg = expect_error(resp, 429, "free_tier_limit").await;
    assert!(
        msg.starts_with("Free-tier limit: You've reached your free limit for the hour."),
        "{msg}"
    );
    // A verified account has no hourly limit.
    let other = account(
        &db.url,
        "verified-hourly@example.com",
        Some("4242424242424242"),
    );
    for _ in 0..4 {
        assert_eq!(
            post_chat(&server, &other, &chat_body(FREE, json!({})))
                .await
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn free_tier_allows_one_request_in_flight() {
    let db = TestDb::sqlite();
    let server = Server::start(
        &db.url,
        &[("TOLLGATE__PROVIDERS__DEMO__TOKENS_PER_SECOND", "20")],
    );
    let key = account(&db.url, "inflight@example.com", None);
    let slow = post_chat(
        &server,
        &key,
        &chat_body(FREE, json!({"stream": true, "max_tokens": 30})),
    )
    .await;
    assert_eq!(slow.status(), 200);
    let resp = post_chat(&server, &key, &chat_body(FREE, json!({}))).await;
    assert!(resp.headers().contains_key("retry-after"));
    let msg = expect_error(resp, 429, "rate_limited").await;
    assert!(msg.contains("in flight"), "{msg}");
    let text = slow.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        post_chat(&server, &key, &chat_body(FREE, json!({})))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_card_unlocks_the_catalogue_and_50000_credits_once() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "card@example.com", None);
    assert_eq!(balance(&server, &key).await["tier"], "free");

    let (ok, _, err) = cli(
        &db.url,
        &[
            "billing",
            "add-card",
            "--email",
            "card@example.com",
            "--card",
            "4000000000000002",
        ],
    );
    assert!(!ok && err.contains("declined"), "{err}");
    let out = cli_ok(
        &db.url,
        &[
            "billing",
            "add-card",
            "--email",
            "card@example.com",
            "--card",
            "4242424242424242",
        ],
    );
    assert_eq!(out, json!({"tier": "verified", "balance_credits": 50000}));
    // The server sees it on its next request.
    let b = balance(&server, &key).await;
    assert_eq!(
        (b["balance"].clone(), b["tier"].clone()),
        (json!(50000), json!("verified"))
    );

    // The same card again, or on another account, grants nothing more.
    let again = cli_ok(
        &db.url,
        &[
            "billing",
            "add-card",
            "--email",
            "card@example.com",
            "--card",
            "4242 4242 4242 4242",
        ],
    );
    assert_eq!(again, json!({"tier": "verified", "balance_credits": 50000}));
    let other = account(&db.url, "card2@example.com", Some("4242424242424242"));
    let b = balance(&server, &other).await;
    assert_eq!(
        (b["balance"].clone(), b["tier"].clone()),
        (json!(0), json!("verified"))
    );
    // A verified account with no credits gets credits_exhausted on a priced model.
    expect_error(
        post_chat(&server, &other, &chat_body(PRO, json!({}))).await,
        403,
        "credits_exhausted",
    )
    .await;

    let resp = post_chat(&server, &key, &chat_body(PRO, json!({}))).await;
    assert_eq!(resp.status(), 200);
    let used: i64 = resp.headers()["x-tollgate-credits-used"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let usd = resp.headers()["x-tollgate-usd-spent"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = resp.json().await.unwrap();
    // $10 / $30 per million tokens = 20 / 60 credits per token.
    let u = &body["usage"];
    let expected =
        u["prompt_tokens"].as_i64().unwrap() * 20 + u["completion_tokens"].as_i64().unwrap() * 60;
    assert_eq!(used, expected);
    assert_eq!(body["meta"]["usage"]["credits_used"], used);
    assert_eq!(usd, format!("{}", used as f64 / 2_000_000.0));
    assert_eq!(balance(&server, &key).await["balance"], 50_000 - used);
}

#[tokio::test]
async fn spending_the_grant_ends_in_the_exact_403() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[("TOLLGATE__BILLING__BILLING_URL", BILLING_URL)]);
    let key = account(&db.url, "spend@example.com", Some("5555555555554444"));
    let mut spent = 0i64;
    let mut ok = 0;
    let final_msg = loop {
        let resp = post_chat(&server, &key, &chat_body(PRO, json!({}))).await;
        if resp.status() != 200 {
            break expect_error(resp, 403, "credits_exhausted").await;
        }
        ok += 1;
        let body: Value = resp.json().await.unwrap();
        spent += body["meta"]["usage"]["credits_used"].as_i64().unwrap();
        assert!(ok < 100, "the grant never ran out");
    };
    assert!(
        (8..=20).contains(&ok),
        "{ok} requests fit in 50,000 credits"
    );
    assert_eq!(
        final_msg,
        format!("You have exhausted the available [plan.rule:api_token] resource limit. Update your payment method to continue using the service. For more information please visit {BILLING_URL}")
    );
    let b = balance(&server, &key).await;
    assert_eq!(b["balance"], 50_000 - spent);
    assert!(b["balance"].as_i64().unwrap() >= 0);
    assert!(cli(&db.url, &["ledger", "check"]).0);
}

#[tokio::test]
async fn max_tokens_is_lowered_to_what_the_balance_affords() {
    let db = TestDb::sqlite();
    let server = Server::start(
        &db.url,
        &[("TOLLGATE__PROVIDERS__DEMO__REPLY_TOKENS", "400")],
    );
    let key = account(&db.url, "lower@example.com", Some("4242424242424242"));
    cli_ok(
        &db.url,
        &[
            "credits",
            "adjust",
            "--email",
            "lower@example.com",
            "--credits",
            "-48000",
            "--reason",
            "test",
        ],
    );
    let resp = post_chat(&server, &key, &chat_body(PRO, json!({"max_tokens": 400}))).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let out = body["usage"]["completion_tokens"].as_i64().unwrap();
    assert!(
        out > 0 && out < 34,
        "2,000 credits buy at most 33 output tokens, got {out}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let used = body["meta"]["usage"]["credits_used"].as_i64().unwrap();
    assert!(used <= 2000);
    assert_eq!(balance(&server, &key).await["balance"], 2000 - used);
}

#[tokio::test]
async fn management_keys_cannot_call_models() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    account(&db.url, "mgmt@example.com", None);
    let mgmt = cli_ok(
        &db.url,
        &[
            "key",
            "create",
            "--email",
            "mgmt@example.com",
            "--management",
        ],
    );
    let key = mgmt["key"].as_str().unwrap();
    let msg = expect_error(
        post_chat(&server, key, &chat_body(FREE, json!({}))).await,
        403,
        "scope_forbidden",
    )
    .await;
    assert!(msg.contains("Management keys cannot call models"), "{msg}");
    let resp = client()
        .get(server.url("/v1/billing/balance"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    expect_error(resp, 403, "scope_forbidden").await;
}

#[tokio::test]
async fn client_request_ids_are_echoed_when_valid_and_dropped_when_not() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "crid@example.com", None);
    let send = |id: &'static str| {
        client()
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("X-Client-Request-Id", id)
            .json(&chat_body(FREE, json!({})))
            .send()
    };
    let resp = send("order-42.a_b:c").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-client-request-id"], "order-42.a_b:c");
    let resp = send("has spaces/and slashes").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("x-client-request-id"));
}
