//! OpenAI and every service speaking its chat-completions wire format; vendors are data.

mod error;
mod stream;

use crate::adapter::{ChatCall, ChatProvider, ChatReply};
use crate::error::{Deadline, ProviderError};
use serde_json::Value;
use std::time::Duration;
use tollgate_protocol::openai::Usage;

/// One OpenAI-compatible endpoint: where it is and how to authenticate.
#[derive(Clone)]
pub struct OpenAiCompat {
    client: reqwest::Client,
    chat_url: String,
    api_key: String,
}

impl OpenAiCompat {
    /// `base_url` is the API root that `/chat/completions` is appended to
    /// (for OpenAI, `https://api.openai.com/v1`).
    pub fn new(base_url: &str, api_key: String, connect_timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            chat_url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
        })
    }
}

#[async_trait::async_trait]
impl ChatProvider for OpenAiCompat {
    async fn chat(&self, call: ChatCall) -> Result<ChatReply, ProviderError> {
        let started = tokio::time::Instant::now();
        let deadline = started + call.timeouts.total;
        let request = self
            .client
            .post(&self.chat_url)
            .bearer_auth(&self.api_key)
            .header(reqwest::header::ACCEPT_ENCODING, "identity")
            .json(&call.body)
            .send();
        let first_byte = call.timeouts.first_byte.min(call.timeouts.total);
        let response = match tokio::time::timeout(first_byte, request).await {
            Err(_) if first_byte < call.timeouts.total => {
                return Err(ProviderError::Timeout(Deadline::FirstByte))
            }
            Err(_) => return Err(ProviderError::Timeout(Deadline::Total)),
            Ok(Err(e)) => return Err(error::from_reqwest(&e)),
            Ok(Ok(r)) => r,
        };
        if !response.status().is_success() {
            return Err(error::from_response(response, deadline).await);
        }
        if call.stream {
            let first_event = started + first_byte;
            return Ok(ChatReply::Stream(stream::chunks(
                response,
                first_event,
                deadline,
            )));
        }
        let bytes = match tokio::time::timeout_at(deadline, response.bytes()).await {
            Err(_) => return Err(ProviderError::Timeout(Deadline::Total)),
            Ok(Err(e)) => return Err(error::from_reqwest(&e)),
            Ok(Ok(b)) => b,
        };
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::Invalid(format!("response is not JSON: {e}")))?;
        if !body.get("choices").is_some_and(Value::is_array) {
            return Err(ProviderError::Invalid(
                "response has no `choices` array".into(),
            ));
        }
        let usage = Usage::from_openai(body.get("usage"));
        Ok(ChatReply::Complete { body, usage })
    }
}
