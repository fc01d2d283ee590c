//! What one tenant's large requests may cost the process: memory bounded by a small multiple
//! of their bodies, a budget for all requests in flight, memory given back after a burst, and
//! other clients served while long prompts are counted.

mod common;

use common::*;
use std::time::{Duration, Instant};

const CARD: &str = "4242424242424242";

/// A body of about 10 MB (under the 10 MiB limit): 325,000 short messages.
fn many_messages() -> String {
    let message = r#"{"role":"user","content":"hi"},"#;
    let mut body = String::from(r#"{"model":"tollgate/demo-chat","max_tokens":5,"messages":["#);
    body.push_str(&message.repeat(325_000));
    body.pop();
    body.push_str("]}");
    body
}

/// The server's resident memory, in MB.
fn rss_mb(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

fn long_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// Eight 10 MB bodies of 325,000 messages at once: the process stays within a small multiple
/// of what it was sent, another client's `/healthz` is answered throughout, and the memory
/// goes back to the system after the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_huge_prompts_is_bounded_and_given_back() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url, &[]);
    let key = account(&db.url, "huge@example.com", Some(CARD));
    let body = many_messages();
    assert!(
        body.len() > 10_000_000 && body.len() < 10 << 20,
        "{}",
        body.len()
    );
    let before = rss_mb(&server);

    let client = long_client();
    let burst = (0..8).map(|_| {
        client
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    });
    let burst = tokio::spawn(futures::future::join_all(burst));
    let mut peak = 0;
    let mut slowest = Duration::ZERO;
    while !burst.is_finished() {
        let asked = Instant::now();
        let health = client.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        slowest = slowest.max(asked.elapsed());
        peak = peak.max(rss_mb(&server));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for resp in burst.await.unwrap() {
        assert_eq!(resp.unwrap().status(), 200);
    }
    eprintln!("rss before {before} MB, peak {peak} MB; slowest /healthz {slowest:?}");
    // Eight bodies of 10 MB: well within four times what was sent (80 MB).
    assert!(peak < before + 300, "peak {peak} MB from {before} MB");
    assert!(
        slowest < Duration::from_secs(1),
        "/healthz waited {slowest:?}"
    );
    // jemalloc's background threads return the freed pages after their decay time.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut now = rss_mb(&server);
    while now > before + 80 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        now = rss_mb(&server);
    }
    eprintln!("rss after the burst {now} MB");
    assert!(
        now <= before + 80,
        "still {now} MB resident after the burst (from {before} MB)"
    );
}

/// The memory budget of requests in flight: past it, a large request gets a clear 503 and
/// nothing is charged or held; small requests are never refused by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_past_the_memory_budget_get_503() {
    let db = TestDb::sqlite();
    // Room for one 10 MB body (it holds four times its size), not two.
    let server = Server::start(
        &db.url,
        &[("TOLLGATE__SERVER__REQUEST_MEMORY_LIMIT_BYTES", "60000000")],
    );
    let key = account(&db.url, "budget@example.com", Some(CARD));
    let body = many_messages();
    let client = long_client();
    let send = || {
        client
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    let results = futures::future::join_all((0..3).map(|_| send())).await;
    let mut statuses: Vec<u16> = Vec::new();
    for resp in results {
        let resp = resp.unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 503 {
            let msg = expect_error(resp, 503, "service_unavailable").await;
            assert!(msg.contains("busy with other large requests"), "{msg}");
        }
    }
    statuses.sort_unstable();
    assert!(
        statuses.contains(&200) && statuses.contains(&503),
        "{statuses:?}"
    );
    assert_eq!(
        post_chat(
            &server,
            &key,
            &chat_body("tollgate/demo-chat", serde_json::json!({}))
        )
        .await
        .status(),
        200
    );
    assert!(metric(&server, "tollgate_requests_refused_memory_total").await > 0);
    assert_eq!(balance(&server, &key).await["held"], 0);
}
