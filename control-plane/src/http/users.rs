//! `/v1/users`: list users and their sessions (Admin+), change roles and remove users (Owner).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath};
use crate::auth::{Action, Principal, Role};
use crate::users::{self, Session, User, UserError};

fn user_error(e: UserError) -> ApiError {
    match e {
        UserError::NotFound => ApiError::not_found("no such user"),
        UserError::Invalid(m) => ApiError::validation(m),
        e @ UserError::RoleFromProvider => ApiError::conflict(e.to_string()),
        UserError::Unconfirmed(c) => super::confirm::confirm_error(c),
        UserError::Database(d) => ApiError::from(d),
    }
}

#[derive(Debug, Serialize)]
pub struct UserList {
    pub items: Vec<User>,
}

/// Users span the whole fleet, so a scoped principal may not list them.
fn authorize_read(principal: &Principal) -> ApiResult<()> {
    principal.authorize(Action::UsersRead)?;
    if principal.is_scoped() {
        return Err(ApiError::forbidden(
            "users are not visible to a scoped principal",
        ));
    }
    Ok(())
}

/// Nobody changes or removes their own user, and nobody grants above their own role.
fn authorize_change(principal: &Principal, user_id: Uuid, role: Option<&Role>) -> ApiResult<()> {
    principal.authorize(Action::UsersManage)?;
    if matches!(principal.actor, crate::auth::Actor::Device { id, .. } | crate::auth::Actor::SsoUser { id, .. } if id == user_id)
    {
        return Err(ApiError::forbidden(
            "you cannot change or remove your own user",
        ));
    }
    if role.is_some_and(|r| r.grant_rank() > principal.role.rank()) {
        return Err(ApiError::forbidden(
            "nobody can grant a role above their own",
        ));
    }
    Ok(())
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<UserList>> {
    authorize_read(&principal)?;
    Ok(Json(UserList {
        items: users::list(&state.pool, state.clock.now()).await?,
    }))
}

#[derive(Debug, Serialize)]
pub struct SessionList {
    pub items: Vec<Session>,
}

pub async fn sessions(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
) -> ApiResult<Json<SessionList>> {
    authorize_read(&principal)?;
    let items = users::sessions(&state.pool, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok(Json(SessionList { items }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    pub role: Role,
    /// Label selector; omitted or empty for the whole fleet.
    #[serde(default)]
    pub scope: Option<String>,
}

pub async fn change(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ChangeRequest>,
) -> ApiResult<StatusCode> {
    authorize_change(&principal, user_id, Some(&body.role))?;
    let scope = super::pairing::effective_scope(&principal, body.scope.as_deref())?;
    super::roles::ensure_exists(&state, &body.role).await?;
    users::change_role(
        &state.pool,
        &principal.actor,
        user_id,
        body.role,
        &scope,
        state.clock.now(),
    )
    .await
    .map_err(user_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// Why (required: removing a user is destructive).
    #[serde(default)]
    pub reason: String,
}

pub async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    ApiPath(user_id): ApiPath<Uuid>,
    super::extract::ApiQuery(query): super::extract::ApiQuery<RemoveQuery>,
) -> ApiResult<StatusCode> {
    authorize_change(&principal, user_id, None)?;
    let reason = query.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 || reason.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "reason is required (at most 500 characters, no control characters): removing a user is destructive",
        ));
    }
    if !users::exists(&state.pool, user_id).await? {
        return Err(ApiError::not_found("no such user"));
    }
    let params = serde_json::json!({ "reason": reason });
    let intent = crate::confirm::Intent {
        actor: &principal.actor,
        action: "user.remove",
        target: user_id.to_string(),
        params: &params,
    };
    let token = super::confirm::token_or_428(&state, &headers, &intent).await?;
    users::remove(
        &state.pool,
        &principal.actor,
        user_id,
        reason,
        (&token, &intent),
        state.clock.now(),
    )
    .await
    .map_err(|e| match e {
        UserError::Unconfirmed(c) => super::confirm::confirm_error(c),
        other => user_error(other),
    })?;
    Ok(StatusCode::NO_CONTENT)
}
