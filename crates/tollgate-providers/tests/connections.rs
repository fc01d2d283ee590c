//! Upstream connections over plain HTTP: kept and reused between calls, closed when a reply
//! is abandoned, replaced when the upstream closed them while they waited.

use futures::StreamExt;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_providers::openai_compat::OpenAiCompat;
use tollgate_providers::{ChatCall, ChatProvider, ChatReply, Timeouts};
use tollgate_testkit::{Behaviour, FakeOpenAi};

fn adapter(base_url: &str) -> OpenAiCompat {
    OpenAiCompat::new(base_url, "sk-test".into(), Duration::from_secs(2)).unwrap()
}

fn ask(stream: bool) -> ChatCall {
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": stream,
    });
    ChatCall {
        body: serde_json::to_vec(&body).unwrap(),
        stream,
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(2),
            total: Duration::from_secs(5),
        },
        deadline: tokio::time::Instant::now() + Duration::from_secs(5),
    }
}

/// Makes one call and reads its reply to the end; says whether it succeeded.
async fn complete(adapter: &OpenAiCompat, stream: bool) -> bool {
    match adapter.chat(ask(stream)).await {
        Ok(ChatReply::Complete(_)) => !stream,
        Ok(ChatReply::Stream(chunks)) => {
            let items: Vec<_> = chunks.collect().await;
            stream && !items.is_empty() && items.iter().all(Result::is_ok)
        }
        Err(e) => panic!("call failed: {e:?}"),
    }
}

#[tokio::test]
async fn calls_in_turn_share_one_connection_sent_in_origin_form() {
    let fake = FakeOpenAi::start(Behaviour::normal(4)).await;
    let adapter = adapter(&fake.base_url());
    for stream in [false, true, true, false, true, false] {
        assert!(complete(&adapter, stream).await);
    }
    assert_eq!(fake.request_count(), 6);
    assert_eq!(fake.connections(), 1);
    let host = fake.base_url()["http://".len()..]
        .trim_end_matches("/v1")
        .to_owned();
    for (target, sent_host) in fake.targets() {
        assert_eq!(target, "/v1/chat/completions");
        assert_eq!(sent_host.as_deref(), Some(host.as_str()));
    }
}

#[tokio::test]
async fn concurrent_calls_open_a_connection_each_and_later_calls_reuse_them() {
    let fake = FakeOpenAi::start(Behaviour::Normal {
        reply_tokens: 3,
        chunk_delay: Duration::from_millis(20),
    })
    .await;
    let adapter = adapter(&fake.base_url());
    for round in 0..3 {
        let calls = (0..6).map(|i| complete(&adapter, i % 2 == 0));
        let done = futures::future::join_all(calls).await;
        assert!(done.iter().all(|ok| *ok), "round {round}: {done:?}");
    }
    assert_eq!(fake.request_count(), 18);
    assert_eq!(fake.connections(), 6);
}

#[tokio::test]
async fn an_abandoned_stream_closes_its_connection_and_the_next_call_opens_another() {
    let fake = FakeOpenAi::start(Behaviour::HangAfter { chunks: 2 }).await;
    let adapter = adapter(&fake.base_url());
    let Ok(ChatReply::Stream(mut chunks)) = adapter.chat(ask(true)).await else {
        panic!("expected a stream")
    };
    assert!(chunks.next().await.is_some_and(|c| c.is_ok()));
    drop(chunks);
    fake.set_behaviour(Behaviour::normal(3));
    assert!(complete(&adapter, true).await);
    assert!(complete(&adapter, false).await);
    assert_eq!(fake.connections(), 2);
}

/// An upstream that answers each connection's first request, then closes it without saying
/// so in the response (as servers do with idle keep-alive connections); counts connections.
async fn closing_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // The request's head, then as much body as it announced.
                while !has_whole_request(&request) {
                    let n = tcp.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the client closed mid-request");
                    request.extend_from_slice(&buf[..n]);
                }
                let body = json!({
                    "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
                })
                .to_string();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                tcp.write_all(head.as_bytes()).await.unwrap();
                tcp.write_all(body.as_bytes()).await.unwrap();
                // Closed once the client has put the connection back to wait for the next call.
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    (url, accepted)
}

fn has_whole_request(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    bytes.len() >= end + 4 + length
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_it_waited_is_replaced() {
    let (url, accepted) = closing_upstream().await;
    let adapter = adapter(&url);
    for _ in 0..3 {
        assert!(complete(&adapter, false).await);
        // Time for the close to arrive before the next call takes the connection out.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 3);
}
