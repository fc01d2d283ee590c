//! The OpenAI-compatible adapter against the fake OpenAI upstream, over loopback HTTP.

use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_protocol::openai::Usage;
use tollgate_providers::error::Deadline;
use tollgate_providers::openai_compat::OpenAiCompat;
use tollgate_providers::{ChatCall, ChatProvider, ChatReply, ProviderError, Timeouts};
use tollgate_testkit::{closed_port_url, Behaviour, FakeOpenAi};

const FIRST_BYTE: Duration = Duration::from_millis(300);
const TOTAL: Duration = Duration::from_millis(800);
/// How late a deadline may fire on a busy test machine.
const SLACK: Duration = Duration::from_millis(400);

fn adapter(base_url: &str) -> OpenAiCompat {
    OpenAiCompat::new(base_url, "sk-test".into(), Duration::from_millis(300)).unwrap()
}

fn call(stream: bool) -> ChatCall {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello to the fake upstream."}],
        "max_tokens": 50,
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let timeouts = Timeouts {
        connect: Duration::from_millis(300),
        first_byte: FIRST_BYTE,
        total: TOTAL,
    };
    ChatCall {
        body: serde_json::to_vec(&body).unwrap(),
        stream,
        timeouts,
        deadline: tokio::time::Instant::now() + TOTAL,
    }
}

async fn chat(fake: &FakeOpenAi, call: ChatCall) -> Result<ChatReply, ProviderError> {
    adapter(&fake.base_url()).chat(call).await
}

/// Everything the stream yields until it ends (which it must, within a few seconds).
async fn drain(reply: ChatReply) -> Vec<Result<Value, ProviderError>> {
    let ChatReply::Stream(stream) = reply else {
        panic!("expected a stream, got {reply:?}")
    };
    let items: Vec<_> = tokio::time::timeout(Duration::from_secs(5), stream.collect())
        .await
        .expect("the stream ends");
    items.into_iter().map(|c| c.map(|c| c.value())).collect()
}

fn content(chunk: &Value) -> Option<&str> {
    chunk
        .pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
}

#[tokio::test]
async fn non_stream_success_parses_usage_and_forwards_model_and_auth() {
    let fake = FakeOpenAi::start(Behaviour::normal(3)).await;
    let reply = chat(&fake, call(false)).await.unwrap();
    let ChatReply::Complete(reply) = reply else {
        panic!("expected a complete reply")
    };
    let (body, usage) = (reply.value(), reply.usage());
    // 31 characters of prompt / 4 = 7 prompt tokens; one completion token per word.
    assert_eq!(
        usage,
        Some(Usage {
            prompt_tokens: 7,
            completion_tokens: 3,
            cached_tokens: 0
        })
    );
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "the fake upstream"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let sent = fake.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["model"], "gpt-4o-mini");
    assert_eq!(sent[0]["max_tokens"], 50);
    assert_eq!(
        fake.authorizations(),
        vec![Some("Bearer sk-test".to_owned())]
    );
}

#[tokio::test]
async fn output_limit_cuts_the_reply_with_finish_reason_length() {
    let fake = FakeOpenAi::start(Behaviour::normal(10)).await;
    let mut c = call(false);
    let mut body: Value = serde_json::from_slice(&c.body).unwrap();
    body["max_completion_tokens"] = json!(4);
    c.body = serde_json::to_vec(&body).unwrap();
    let ChatReply::Complete(reply) = chat(&fake, c).await.unwrap() else {
        panic!()
    };
    let (body, usage) = (reply.value(), reply.usage());
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(usage.unwrap().completion_tokens, 4);
}

#[tokio::test]
async fn stream_success_yields_chunks_in_order_then_usage_then_ends() {
    let fake = FakeOpenAi::start(Behaviour::Normal {
        reply_tokens: 3,
        chunk_delay: Duration::from_millis(5),
    })
    .await;
    let items = drain(chat(&fake, call(true)).await.unwrap()).await;
    let chunks: Vec<Value> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(chunks.len(), 6, "role, 3 words, finish, usage: {chunks:?}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let words: Vec<_> = chunks[1..4].iter().map(|c| content(c).unwrap()).collect();
    assert_eq!(words, ["the", " fake", " upstream"]);
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["choices"], json!([]));
    let usage = Usage::from_openai(chunks[5].get("usage")).unwrap();
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 7,
            completion_tokens: 3,
            cached_tokens: 0
        }
    );
    assert_eq!(fake.requests()[0]["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn stream_without_usage_ends_after_done() {
    let fake = FakeOpenAi::start(Behaviour::NoUsage).await;
    let items = drain(chat(&fake, call(true)).await.unwrap()).await;
    assert!(items.iter().all(Result::is_ok), "{items:?}");
    assert!(items
        .iter()
        .all(|c| c.as_ref().unwrap().get("usage").is_none_or(Value::is_null)));
}

#[tokio::test]
async fn non_stream_usage_is_taken_as_reported() {
    let fake = FakeOpenAi::start(Behaviour::NoUsage).await;
    let ChatReply::Complete(reply) = chat(&fake, call(false)).await.unwrap() else {
        panic!()
    };
    let usage = reply.usage();
    assert_eq!(usage, None);
    fake.set_behaviour(Behaviour::LieUsage {
        completion_tokens: 99,
    });
    let ChatReply::Complete(reply) = chat(&fake, call(false)).await.unwrap() else {
        panic!()
    };
    let usage = reply.usage();
    assert_eq!(usage.unwrap().completion_tokens, 99);
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn error_statuses_carry_the_upstream_message_and_retry_after() {
    let fake = FakeOpenAi::start(Behaviour::server_error("The server had an error.")).await;
    let err = chat(&fake, call(false)).await.unwrap_err();
    let expected = ProviderError::Status {
        status: 500,
        message: "The server had an error.".into(),
        retry_after: None,
    };
    assert_eq!(err, expected);
    assert!(err.is_retryable());

    fake.set_behaviour(Behaviour::rate_limited(7));
    let err = chat(&fake, call(true)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Status {
                status: 429,
                retry_after: Some(7),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());

    fake.set_behaviour(Behaviour::invalid_request("'messages' is required."));
    let err = chat(&fake, call(false)).await.unwrap_err();
    let expected = ProviderError::Status {
        status: 400,
        message: "'messages' is required.".into(),
        retry_after: None,
    };
    assert_eq!(err, expected);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn connection_refused_is_connect() {
    let err = adapter(&closed_port_url())
        .chat(call(false))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Connect(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn silent_upstream_misses_the_first_byte_deadline() {
    let fake = FakeOpenAi::start(Behaviour::Hang).await;
    for stream in [false, true] {
        let started = Instant::now();
        let err = chat(&fake, call(stream)).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(err, ProviderError::Timeout(Deadline::FirstByte));
        assert!(
            took >= FIRST_BYTE && took < FIRST_BYTE + SLACK,
            "took {took:?}"
        );
    }
}

#[tokio::test]
async fn stream_without_a_first_event_misses_the_first_byte_deadline() {
    let slow = Behaviour::Normal {
        reply_tokens: 2,
        chunk_delay: FIRST_BYTE + SLACK,
    };
    let fake = FakeOpenAi::start(slow).await;
    let started = Instant::now();
    let items = drain(chat(&fake, call(true)).await.unwrap()).await;
    let took = started.elapsed();
    assert_eq!(
        items,
        vec![Err(ProviderError::Timeout(Deadline::FirstByte))]
    );
    assert!(
        took >= FIRST_BYTE && took < FIRST_BYTE + SLACK,
        "took {took:?}"
    );
}

#[tokio::test]
async fn stalled_stream_yields_its_chunks_then_misses_the_total_deadline() {
    let fake = FakeOpenAi::start(Behaviour::HangAfter { chunks: 2 }).await;
    let started = Instant::now();
    let items = drain(chat(&fake, call(true)).await.unwrap()).await;
    let took = started.elapsed();
    assert_eq!(items.len(), 4, "{items:?}");
    assert!(items[..3].iter().all(Result::is_ok));
    assert_eq!(content(items[2].as_ref().unwrap()), Some(" fake"));
    assert_eq!(items[3], Err(ProviderError::Timeout(Deadline::Total)));
    assert!(took >= TOTAL && took < TOTAL + SLACK, "took {took:?}");
}

#[tokio::test]
async fn stalled_json_body_misses_the_total_deadline() {
    let fake = FakeOpenAi::start(Behaviour::HangAfter { chunks: 2 }).await;
    let err = chat(&fake, call(false)).await.unwrap_err();
    assert_eq!(err, ProviderError::Timeout(Deadline::Total));
}

#[tokio::test]
async fn cut_stream_yields_its_chunks_then_cut() {
    let fake = FakeOpenAi::start(Behaviour::CutAfter { chunks: 2 }).await;
    let items = drain(chat(&fake, call(true)).await.unwrap()).await;
    assert_eq!(items.len(), 4, "{items:?}");
    assert!(items[..3].iter().all(Result::is_ok));
    assert_eq!(items[3], Err(ProviderError::Cut));
}

#[tokio::test]
async fn cut_json_body_is_cut() {
    let fake = FakeOpenAi::start(Behaviour::CutAfter { chunks: 2 }).await;
    assert_eq!(
        chat(&fake, call(false)).await.unwrap_err(),
        ProviderError::Cut
    );
}

#[tokio::test]
async fn non_json_body_is_invalid() {
    let fake = FakeOpenAi::start(Behaviour::NotJson).await;
    let err = chat(&fake, call(false)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Invalid(_)), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_body_that_never_ends_is_invalid_once_it_outgrows_the_limit() {
    let fake = FakeOpenAi::start(Behaviour::EndlessBody { status: 200 }).await;
    let err = chat(&fake, call(false)).await.unwrap_err();
    // Without the limit the read would run into the total deadline instead.
    assert!(
        matches!(&err, ProviderError::Invalid(m) if m.contains("longer than")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_error_body_that_never_ends_is_read_only_as_far_as_its_start() {
    let fake = FakeOpenAi::start(Behaviour::EndlessBody { status: 503 }).await;
    let started = Instant::now();
    let err = chat(&fake, call(false)).await.unwrap_err();
    let ProviderError::Status {
        status, message, ..
    } = &err
    else {
        panic!("expected a status error, got {err:?}")
    };
    assert_eq!(*status, 503);
    assert!(
        message.starts_with(r#"{"error":{"message":"aaa"#),
        "{message}"
    );
    assert_eq!(message.len(), 500);
    assert!(started.elapsed() < TOTAL, "took {:?}", started.elapsed());
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_stream_event_that_never_ends_is_invalid_once_it_outgrows_the_limit() {
    let fake = FakeOpenAi::start(Behaviour::EndlessEvent).await;
    let items = drain(chat(&fake, call(true)).await.unwrap()).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        matches!(&items[0], Err(ProviderError::Invalid(m)) if m.contains("longer than")),
        "{items:?}"
    );
}
