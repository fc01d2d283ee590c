//! How a streamed reply reaches the client: events the upstream paces go out as they come;
//! events it sends in one burst go out gathered, in a few writes, intact and in order; the
//! head's `Server-Timing` splits the wait for the first event between upstream and gateway.

mod common;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tollgate_testkit::{Behaviour, FakeOpenAi};

const MINI: &str = "openai/gpt-4o-mini";

/// The text an event's data delivers (`choices[0].delta.content`), if it is a chunk with any.
fn content(data: &str) -> Option<String> {
    let chunk: Value = serde_json::from_str(data).ok()?;
    chunk["choices"][0]["delta"]["content"]
        .as_str()
        .map(str::to_owned)
}

/// The body of a chunked HTTP/1.1 response, as the chunks it was sent in.
fn chunks_of(response: &[u8]) -> Vec<Vec<u8>> {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let mut rest = &response[head_end..];
    let mut chunks = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16)
            .expect("a hexadecimal chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            return chunks;
        }
        chunks.push(rest[..size].to_vec());
        assert_eq!(&rest[size..size + 2], b"\r\n", "a chunk ends with CRLF");
        rest = &rest[size + 2..];
    }
}

/// Sends a chat request over a plain socket and returns the raw response.
fn raw_request(base: &str, key: &str, body: &Value) -> Vec<u8> {
    let addr = base.trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    socket
        .read_to_end(&mut response)
        .expect("the whole response");
    response
}

#[tokio::test]
async fn a_burst_from_the_upstream_is_gathered_into_few_writes_intact_and_in_order() {
    let db = TestDb::sqlite();
    let fake = FakeOpenAi::start(Behaviour::normal(120)).await;
    let server = Server::with_upstream(&db.url, &fake.base_url(), &[]);
    let key = account(&db.url, "burst@example.com", Some("4242424242424242"));
    let body = chat_body(
        MINI,
        json!({"stream": true, "max_tokens": 200, "stream_options": {"include_usage": true}}),
    );
    let (base, k, b) = (server.base.clone(), key.clone(), body.clone());
    let response = tokio::task::spawn_blocking(move || raw_request(&base, &k, &b))
        .await
        .unwrap();
    let chunks = chunks_of(&response);
    let text = String::from_utf8(chunks.concat()).unwrap();
    let data = sse_data(&text);
    // The role chunk, 120 words, the finish chunk, the usage chunk, [DONE].
    assert_eq!(data.len(), 124, "{data:?}");
    assert_eq!(data.last().unwrap(), "[DONE]");
    for d in &data[..data.len() - 1] {
        assert!(serde_json::from_str::<Value>(d).is_ok(), "not JSON: {d}");
    }
    let streamed: String = data.iter().filter_map(|d| content(d)).collect();
    // The same words, in the same order, as the whole reply.
    let whole: Value = post_chat(&server, &key, &chat_body(MINI, json!({"max_tokens": 200})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        streamed,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(streamed.split_whitespace().count(), 120);
    // Every HTTP chunk holds whole events: none is split across writes.
    for c in &chunks {
        assert!(c.starts_with(b"data: ") && c.ends_with(b"\n\n"), "{c:?}");
    }
    // The first event goes out alone, at once; the burst behind it in a few writes, not one
    // per event.
    assert_eq!(sse_data(std::str::from_utf8(&chunks[0]).unwrap()).len(), 1);
    assert!(
        chunks.len() <= data.len() / 4,
        "{} writes for {} events",
        chunks.len(),
        data.len()
    );
    let b = balance(&server, &key).await;
    assert_eq!(b["held"], 0);
    assert!(cli(&db.url, &["ledger", "check"]).0);
}

#[tokio::test]
async fn paced_events_reach_the_client_as_the_upstream_sends_them() {
    let db = TestDb::sqlite();
    let pause = Duration::from_millis(60);
    let fake = FakeOpenAi::start(Behaviour::Normal {
        reply_tokens: 5,
        chunk_delay: pause,
    })
    .await;
    let server = Server::with_upstream(&db.url, &fake.base_url(), &[]);
    let key = account(&db.url, "paced@example.com", Some("4242424242424242"));
    let resp = post_chat(&server, &key, &chat_body(MINI, json!({"stream": true}))).await;
    assert_eq!(resp.status(), 200);
    let sent = Instant::now();
    let mut arrivals: Vec<(Duration, String)> = Vec::new();
    let mut body = resp.bytes_stream();
    let mut buffer = String::new();
    while let Some(piece) = body.next().await {
        buffer.push_str(std::str::from_utf8(&piece.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            arrivals.push((sent.elapsed(), event));
        }
    }
    let content: Vec<Duration> = arrivals
        .iter()
        .filter(|(_, e)| {
            let data = e.trim().strip_prefix("data: ").unwrap_or_default();
            content(data).is_some_and(|c| !c.is_empty())
        })
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(content.len(), 5, "{arrivals:?}");
    // Each word arrived on its own, about one pause after the one before: none waited for
    // the next.
    for pair in content.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= pause / 2, "words {gap:?} apart: {arrivals:?}");
    }
}

/// The `dur` (ms) of each metric in a `Server-Timing` value, in order.
fn timings(value: &str) -> Vec<(String, f64)> {
    value
        .split(',')
        .map(|m| {
            let (name, dur) = m.trim().split_once(";dur=").expect("name;dur=ms");
            (name.to_owned(), dur.parse().expect("a number of ms"))
        })
        .collect()
}

#[tokio::test]
async fn server_timing_splits_the_wait_for_the_first_event_between_upstream_and_gateway() {
    let db = TestDb::sqlite();
    let pause = Duration::from_millis(80);
    let fake = FakeOpenAi::start(Behaviour::Normal {
        reply_tokens: 2,
        chunk_delay: pause,
    })
    .await;
    let server = Server::with_upstream(&db.url, &fake.base_url(), &[]);
    let key = account(&db.url, "timing@example.com", Some("4242424242424242"));
    for stream in [true, false] {
        let sent = Instant::now();
        let resp = post_chat(&server, &key, &chat_body(MINI, json!({"stream": stream}))).await;
        let head_after = sent.elapsed().as_secs_f64() * 1e3;
        assert_eq!(resp.status(), 200);
        let value = resp.headers()["server-timing"].to_str().unwrap().to_owned();
        let t = timings(&value);
        assert_eq!(
            t.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["upstream", "gateway"],
            "{value}"
        );
        let (upstream, gateway) = (t[0].1, t[1].1);
        if stream {
            // The head waits for the first event, which the upstream sends after one pause.
            assert!(upstream >= pause.as_secs_f64() * 1e3, "{value}");
        }
        assert!(
            gateway >= 0.0 && gateway < upstream.max(1.0) * 10.0,
            "{value}"
        );
        // Both parts are of the time the client waited for the head.
        assert!(
            upstream + gateway <= head_after + 0.002,
            "{value}, head after {head_after} ms"
        );
        let _ = resp.bytes().await.unwrap();
    }
}
