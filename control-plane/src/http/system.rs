//! The probes — `/health` (liveness) and `/ready` (readiness) — and the CA certificate.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::AppState;
use super::error::ApiResult;
use crate::auth::{Action, Principal};

/// How long `/ready` waits for the database's `select 1`.
const DATABASE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The seed contract's `Health`.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub time: DateTime<Utc>,
}

/// Liveness: 200 `ok` while this process serves HTTP. It deliberately asks nothing of the
/// database: every replica shares it, so a liveness probe that failed during a database outage
/// would make Kubernetes restart all of them at once, which helps nothing. Unauthenticated, so
/// probes can use it; it reveals nothing else.
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        time: state.clock.now(),
    })
}

/// `Readiness.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadinessStatus {
    Ready,
    /// Shutdown has begun: new work belongs on another replica.
    Draining,
    /// The database does not answer.
    Unavailable,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub status: ReadinessStatus,
    pub time: DateTime<Utc>,
}

/// Readiness: 200 `ready` while this replica is not draining and its database answers within
/// [`DATABASE_PROBE_TIMEOUT`]; 503 `draining` once shutdown has begun, 503 `unavailable` when the
/// database does not answer. Unauthenticated like `/health`.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let status = if state.draining.is_cancelled() {
        ReadinessStatus::Draining
    } else if database_answers(&state).await {
        ReadinessStatus::Ready
    } else {
        ReadinessStatus::Unavailable
    };
    let code = match status {
        ReadinessStatus::Ready => StatusCode::OK,
        ReadinessStatus::Draining | ReadinessStatus::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    (
        code,
        Json(Readiness {
            status,
            time: state.clock.now(),
        }),
    )
}

async fn database_answers(state: &AppState) -> bool {
    tokio::time::timeout(
        DATABASE_PROBE_TIMEOUT,
        sqlx::query("select 1").execute(&state.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok())
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
