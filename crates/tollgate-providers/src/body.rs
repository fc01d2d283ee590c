//! Reading an upstream response body whole, as far as a size limit.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;

/// Most bytes of a complete (non-stream) upstream response body.
pub const MAX_BODY: usize = 16 << 20;

/// A body read as far as its limit.
#[derive(Debug)]
pub struct Read {
    /// The body, or its first `limit` bytes when it is longer.
    pub bytes: Vec<u8>,
    /// Whether the body ended within the limit.
    pub whole: bool,
}

/// Reads `body` to its end, or until it has given more than `limit` bytes: then it stops
/// reading (dropping the body closes the connection) and returns the first `limit`.
pub async fn read<B>(mut body: B, limit: usize) -> Result<Read, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let expected = body.size_hint().exact().unwrap_or(0);
    let mut bytes = Vec::with_capacity(usize::try_from(expected).unwrap_or(limit).min(limit));
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        let room = limit - bytes.len();
        if data.len() > room {
            bytes.extend_from_slice(&data[..room]);
            return Ok(Read {
                bytes,
                whole: false,
            });
        }
        bytes.extend_from_slice(&data);
    }
    Ok(Read { bytes, whole: true })
}
