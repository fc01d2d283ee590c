//! OpenAI and every service speaking its chat-completions wire format; vendors are data.

mod error;
mod stream;

use crate::adapter::{ChatCall, ChatProvider, ChatReply};
use crate::body::{self, Read, MAX_BODY};
use crate::error::{Deadline, ProviderError};
use crate::http::HttpClient;
use crate::secret::Redactor;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_TYPE};
use hyper::Uri;
use std::sync::Arc;
use std::time::Duration;
use tollgate_protocol::openai::ChatCompletion;

/// One OpenAI-compatible endpoint: where it is and how to authenticate.
pub struct OpenAiCompat {
    client: HttpClient,
    chat_url: Uri,
    authorization: HeaderValue,
    /// Applied to every upstream text this adapter passes on (error messages).
    redactor: Arc<Redactor>,
}

impl OpenAiCompat {
    /// `base_url` is the API root that `/chat/completions` is appended to
    /// (for OpenAI, `https://api.openai.com/v1`).
    pub fn new(base_url: &str, api_key: String, connect_timeout: Duration) -> Result<Self, String> {
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let chat_url: Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if !matches!(chat_url.scheme_str(), Some("http" | "https")) {
            return Err(format!("`{url}` is not an http:// or https:// URL"));
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {api_key}"))
            .map_err(|_| "the API key contains characters a header cannot carry".to_owned())?;
        authorization.set_sensitive(true);
        Ok(Self {
            client: HttpClient::new(connect_timeout),
            chat_url,
            authorization,
            redactor: Arc::new(Redactor::new([api_key])),
        })
    }

    /// Redacts upstream text with `redactor` (every configured provider's secrets) instead
    /// of this adapter's own key alone.
    pub fn with_redactor(mut self, redactor: Arc<Redactor>) -> Self {
        self.redactor = redactor;
        self
    }
}

#[async_trait::async_trait]
impl ChatProvider for OpenAiCompat {
    async fn chat(&self, call: ChatCall) -> Result<ChatReply, ProviderError> {
        let started = tokio::time::Instant::now();
        let deadline = call.deadline;
        let request = hyper::Request::post(self.chat_url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(ACCEPT_ENCODING, HeaderValue::from_static("identity"))
            .body(Full::new(Bytes::from(call.body)))
            .map_err(|e| ProviderError::Invalid(format!("request: {e}")))?;
        let request = self.client.request(request);
        let first_byte = (started + call.timeouts.first_byte).min(deadline);
        let response = match tokio::time::timeout_at(first_byte, request).await {
            Err(_) if first_byte < deadline => {
                return Err(ProviderError::Timeout(Deadline::FirstByte))
            }
            Err(_) => return Err(ProviderError::Timeout(Deadline::Total)),
            Ok(Err(e)) => return Err(error::from_client(e, &self.redactor)),
            Ok(Ok(r)) => r,
        };
        if !response.status().is_success() {
            return Err(error::from_response(response, deadline, &self.redactor).await);
        }
        if call.stream {
            return Ok(ChatReply::Stream(stream::chunks(
                response,
                first_byte,
                deadline,
                self.redactor.clone(),
            )));
        }
        let read = body::read(response.into_body(), MAX_BODY);
        let bytes = match tokio::time::timeout_at(deadline, read).await {
            Err(_) => return Err(ProviderError::Timeout(Deadline::Total)),
            Ok(Err(_)) => return Err(ProviderError::Cut),
            Ok(Ok(Read { whole: false, .. })) => {
                return Err(ProviderError::Invalid(format!(
                    "response body longer than {MAX_BODY} bytes"
                )))
            }
            Ok(Ok(Read { bytes, .. })) => bytes,
        };
        ChatCompletion::parse(bytes)
            .map(ChatReply::Complete)
            .map_err(ProviderError::Invalid)
    }
}
