//! The caller's API key: `Authorization: Bearer <key>`, or `x-api-key`.

use axum::http::HeaderMap;

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        return scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}
