//! `/health` and the CA certificate.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::AppState;
use super::error::ApiResult;
use crate::auth::{Action, Principal};

/// The seed contract's `Health`.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub time: DateTime<Utc>,
}

/// 200 `ok` when the database answers, 503 `unavailable` when it does not. Unauthenticated, so
/// load balancers can use it; it reveals nothing else.
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let time = state.clock.now();
    let db_ok = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::query("select 1").execute(&state.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if db_ok {
        (StatusCode::OK, Json(Health { status: "ok", time }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unavailable",
                time,
            }),
        )
    }
}

#[derive(Debug, Serialize)]
pub struct CaInfo {
    pub certificate_pem: String,
    pub pin: String,
}

pub async fn certificate_authority(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<CaInfo>> {
    principal.authorize(Action::CaRead)?;
    Ok(Json(CaInfo {
        certificate_pem: state.ca.certificate_pem().to_owned(),
        pin: state.ca.pin().to_owned(),
    }))
}
