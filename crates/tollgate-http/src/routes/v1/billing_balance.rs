//! `GET /v1/billing/balance`: the legacy balance view, in credits.

use crate::error::ApiError;
use crate::extract::auth::bearer;
use crate::state::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use tollgate_core::keys::KeyKind;
use tollgate_core::Error;

pub async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = state.relay.authenticate(bearer(&headers)).await?;
    if who.key.kind == KeyKind::Management {
        return Err(Error::ScopeForbidden(
            "This endpoint needs a regular API key; management keys manage keys only.".into(),
        )
        .into());
    }
    // The principal may come from the key cache: read the balance as it is now.
    let account = state
        .relay
        .store()
        .account(&who.account.id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "balance lookup failed");
            Error::Internal
        })?
        .unwrap_or(who.account);
    let account = &account;
    let threshold = state.relay.settings().low_balance_threshold;
    let low = account.balance < threshold;
    let (status, explanation) = if account.balance.0 <= 0 {
        (
            "exhausted",
            "No credits are left; add a billing method or buy credits to continue",
        )
    } else if low {
        ("low", "Balance is below the low-balance threshold")
    } else {
        ("current", "Balance is current and up to date")
    };
    Ok(Json(json!({
        "balance": account.balance.0,
        "held": account.held.0,
        "available": account.available().0,
        "tier": account.tier().as_str(),
        "lowBalance": low,
        "lowBalanceThreshold": threshold.0,
        "lastUpdated": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        "autoDebitStatus": "disabled",
        "status": status,
        "statusExplanation": explanation,
    })))
}
