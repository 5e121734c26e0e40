//! `/v1/enrollment-tokens`: create (the secret is shown once), list, revoke.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath};
use crate::auth::{Action, Principal};
use crate::enrollment::{self, NewToken, TokenRow};
use crate::fleet::{Labels, validate_labels};

pub const MIN_TTL_SECONDS: i64 = 60;
pub const MAX_TTL_SECONDS: i64 = 30 * 24 * 3600;
pub const MAX_USES: i32 = 10_000;
pub const MAX_NOTE_LEN: usize = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[serde(default = "default_ttl")]
    pub ttl_seconds: i64,
    #[serde(default = "default_max_uses")]
    pub max_uses: i32,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub note: String,
}

fn default_ttl() -> i64 {
    3600
}

fn default_max_uses() -> i32 {
    1
}

#[derive(Debug, Serialize)]
pub struct TokenView {
    pub id: Uuid,
    pub labels: serde_json::Value,
    pub note: String,
    pub max_uses: i32,
    pub uses: i32,
    pub state: &'static str,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenView {
    fn new(row: TokenRow, now: DateTime<Utc>) -> Self {
        Self {
            state: row.state(now),
            id: row.id,
            labels: row.labels,
            note: row.note,
            max_uses: row.max_uses,
            uses: row.uses,
            created_at: row.created_at,
            created_by: row.created_by,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Created {
    #[serde(flatten)]
    pub token_info: TokenView,
    /// The secret. Shown here once; only its hash is stored.
    pub token: String,
    pub ca_pin: String,
    pub enroll_command: String,
}

#[derive(Debug, Serialize)]
pub struct TokenList {
    pub items: Vec<TokenView>,
}

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateRequest>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    principal.authorize(Action::EnrollmentTokensWrite)?;
    if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&body.ttl_seconds) {
        return Err(ApiError::validation(format!(
            "ttl_seconds must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}"
        )));
    }
    if !(1..=MAX_USES).contains(&body.max_uses) {
        return Err(ApiError::validation(format!(
            "max_uses must be between 1 and {MAX_USES}"
        )));
    }
    validate_labels(&body.labels).map_err(ApiError::validation)?;
    // A scoped principal may only enroll nodes into its own scope.
    if !principal.scope.matches(&body.labels) {
        return Err(ApiError::forbidden(
            "the token's labels must match your scope",
        ));
    }
    if body.note.chars().count() > MAX_NOTE_LEN || body.note.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "note must be at most {MAX_NOTE_LEN} characters, without control characters"
        )));
    }
    let now = state.clock.now();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let (row, secret) = enrollment::create_token(
        &state.pool,
        &principal.actor,
        &NewToken {
            ttl: Duration::seconds(body.ttl_seconds),
            max_uses: body.max_uses,
            labels: body.labels,
            note: body.note,
        },
        now,
        &mut rng,
    )
    .await?;
    let enroll_command = format!(
        "moltops-agent enroll --server {} --token {} --ca-pin {} --state-dir /var/lib/moltops-agent",
        state.settings.grpc_advertise,
        secret.as_str(),
        state.ca.pin()
    );
    Ok((
        StatusCode::CREATED,
        Json(Created {
            token_info: TokenView::new(row, now),
            token: secret.to_string(),
            ca_pin: state.ca.pin().to_owned(),
            enroll_command,
        }),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<TokenList>> {
    principal.authorize(Action::EnrollmentTokensRead)?;
    let now = state.clock.now();
    let rows = enrollment::list_tokens(&state.pool).await?;
    Ok(Json(TokenList {
        items: rows
            .into_iter()
            .filter(|r| {
                principal
                    .scope
                    .matches(&serde_json::from_value(r.labels.clone()).unwrap_or_default())
            })
            .map(|r| TokenView::new(r, now))
            .collect(),
    }))
}

pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(token_id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    principal.authorize(Action::EnrollmentTokensWrite)?;
    if principal.is_scoped() {
        let labels = sqlx::query_scalar!(
            "select labels from enrollment_tokens where id = $1",
            token_id
        )
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("no such enrollment token"))?;
        if !principal
            .scope
            .matches(&serde_json::from_value(labels).unwrap_or_default())
        {
            return Err(ApiError::not_found("no such enrollment token"));
        }
    }
    enrollment::revoke_token(&state.pool, &principal.actor, token_id, state.clock.now())
        .await?
        .ok_or_else(|| ApiError::not_found("no such enrollment token"))?;
    Ok(StatusCode::NO_CONTENT)
}
