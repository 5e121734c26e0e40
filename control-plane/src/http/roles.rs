//! `/v1/roles`: the built-in and custom roles with their permissions (Admin+ reads), and custom
//! role definitions (Owner only).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath};
use crate::auth::{Action, Principal, Role};
use crate::roles::{self, Permission, RoleError, RoleInfo};

pub fn role_error(e: RoleError) -> ApiError {
    match e {
        RoleError::Unknown(_) => ApiError::validation(e.to_string()),
        RoleError::Builtin | RoleError::InUse(_) => ApiError::conflict(e.to_string()),
        RoleError::Invalid(m) => ApiError::validation(m),
        RoleError::Database(d) => ApiError::from(d),
    }
}

/// Checks that a role about to be granted exists (422 if not).
pub async fn ensure_exists(state: &AppState, role: &Role) -> ApiResult<()> {
    let mut conn = state.pool.acquire().await?;
    roles::ensure_exists(&mut conn, role)
        .await
        .map_err(role_error)
}

#[derive(Debug, Serialize)]
pub struct RoleList {
    pub items: Vec<RoleInfo>,
    /// Every permission a custom role may hold.
    pub assignable: Vec<Permission>,
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<RoleList>> {
    principal.authorize(Action::RolesRead)?;
    Ok(Json(RoleList {
        items: roles::list(&state.pool).await?,
        assignable: roles::assignable(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRole {
    #[serde(default)]
    pub description: String,
    pub permissions: Vec<Permission>,
}

fn path_role(name: &str) -> ApiResult<Role> {
    Role::parse(name).ok_or_else(|| {
        ApiError::validation(
            "a role name is 1-32 characters of a-z, 0-9, '-' and '_', starting with a letter",
        )
    })
}

pub async fn put(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PutRole>,
) -> ApiResult<(StatusCode, Json<RoleInfo>)> {
    principal.authorize(Action::RolesManage)?;
    let role = path_role(&name)?;
    if body.permissions.len() > 100 {
        return Err(ApiError::validation("at most 100 permissions"));
    }
    let created = roles::put(
        &state.pool,
        &principal.actor,
        &role,
        &body.description,
        &body.permissions,
        state.clock.now(),
    )
    .await
    .map_err(role_error)?;
    // This replica applies it now; the others on the rbac_rules notification.
    state
        .authz
        .reload(&state.pool)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let info = roles::list(&state.pool)
        .await?
        .into_iter()
        .find(|r| r.name == role.as_str())
        .ok_or_else(|| ApiError::internal("the role vanished"))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

pub async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    principal.authorize(Action::RolesManage)?;
    let role = Role::parse(&name).ok_or_else(|| ApiError::not_found("no such role"))?;
    roles::delete(&state.pool, &principal.actor, &role, state.clock.now())
        .await
        .map_err(|e| match e {
            RoleError::Unknown(_) => ApiError::not_found("no such role"),
            other => role_error(other),
        })?;
    state
        .authz
        .reload(&state.pool)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}
