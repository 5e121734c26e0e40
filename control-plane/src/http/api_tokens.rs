//! `/v1/api-tokens`: named automation tokens bound to a role (Owner only). The secret is shown
//! once at creation.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath};
use crate::api_tokens::{self, TokenInfo};
use crate::auth::{Action, Principal, Role};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub expires_in_days: Option<u32>,
    /// Label selector limiting the token's role to matching nodes (not for owners).
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Created {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub scope: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// Shown once; only its hash is stored.
    pub token: String,
}

#[derive(Debug, Serialize)]
pub struct TokenList {
    pub items: Vec<TokenInfo>,
}

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateRequest>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    principal.authorize(Action::ApiTokensManage)?;
    if body.role.rank() > principal.role.rank() {
        return Err(ApiError::forbidden(
            "nobody can grant a role above their own",
        ));
    }
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "name must be 1-100 characters, without control characters",
        ));
    }
    if body
        .expires_in_days
        .is_some_and(|d| !(1..=3650).contains(&d))
    {
        return Err(ApiError::validation(
            "expires_in_days must be between 1 and 3650",
        ));
    }
    let scope = super::pairing::effective_scope(&principal, body.scope.as_deref())?;
    if body.role == Role::Owner && !scope.is_empty() {
        return Err(ApiError::validation("an owner token cannot be scoped"));
    }
    super::roles::ensure_exists(&state, &body.role).await?;
    let now = state.clock.now();
    let expires_in = body.expires_in_days.map(|d| Duration::days(i64::from(d)));
    let created = api_tokens::create(
        &state.pool,
        &principal.actor,
        name,
        body.role.clone(),
        &scope,
        expires_in,
        now,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id: created.id,
            name: name.to_owned(),
            role: body.role.clone(),
            scope,
            expires_at: expires_in.map(|d| now + d),
            token: created.secret.to_string(),
        }),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<TokenList>> {
    principal.authorize(Action::ApiTokensManage)?;
    Ok(Json(TokenList {
        items: api_tokens::list(&state.pool).await?,
    }))
}

pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(token_id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    principal.authorize(Action::ApiTokensManage)?;
    api_tokens::revoke(&state.pool, &principal.actor, token_id, state.clock.now())
        .await?
        .ok_or_else(|| ApiError::not_found("no such API token"))?;
    Ok(StatusCode::NO_CONTENT)
}
