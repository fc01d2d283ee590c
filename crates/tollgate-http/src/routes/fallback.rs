//! Unknown routes (404) and methods (405), in the SPEC §6 shape.

use crate::error::ApiError;
use axum::http::{Method, Uri};

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
