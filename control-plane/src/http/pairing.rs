//! Device pairing (`/pair/start`, `/pair/confirm`, approval), device sessions (refresh, logout)
//! and `/v1/me`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ClientIp, OptionalJson};
use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::{Action, Actor, Principal, Role};
use crate::fleet::Selector;
use crate::pairing::{self, PairingError, Tokens};

const MAX_NAME_LEN: usize = 100;

fn check_name(name: &str, field: &str) -> ApiResult<()> {
    if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "{field} must be at most {MAX_NAME_LEN} characters, without control characters"
        )));
    }
    Ok(())
}

/// 429 with `Retry-After` when either the client's or the global budget is spent.
/// Which global budget a sign-in call draws from: pairing and refresh are kept apart, so a flood
/// of pairing attempts cannot starve the fleet's session refreshes.
#[derive(Clone, Copy)]
pub(super) enum Budget {
    Pairing,
    Refresh,
    /// Single sign-on (login, callback, the CLI's start, confirmation and polls). Every secret on
    /// this path is 256 bits and the provider guards its own sign-in, so there is no lockout
    /// (which would shut out a whole office behind one NAT) and the per-client budget is
    /// generous; its own global budget keeps an SSO flood away from session refreshes.
    Sso,
}

pub(super) fn rate_limit(state: &AppState, client: ClientIp, budget: Budget) -> ApiResult<()> {
    let now = state.clock.now();
    let global = match budget {
        Budget::Pairing => &state.limits.global,
        Budget::Refresh => &state.limits.global_refresh,
        Budget::Sso => &state.limits.global_sso,
    };
    let key = crate::ratelimit::limit_key(client.0);
    let per_client = || {
        state
            .limits
            .lockout
            .check(&key, now)
            .and_then(|()| state.limits.per_client.check(&key, now))
    };
    let verdict = match budget {
        Budget::Sso => state.limits.per_client_sso.check(&key, now),
        Budget::Pairing | Budget::Refresh => per_client(),
    }
    .and_then(|()| global.check("global", now));
    verdict.map_err(|retry| {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many attempts; slow down",
        );
        error.retry_after = Some(retry.as_secs().max(1));
        error
    })
}

fn pairing_error(e: PairingError) -> ApiError {
    match e {
        PairingError::UnknownCode => ApiError::unauthorized(e.to_string()),
        PairingError::NotApproved => {
            ApiError::new(StatusCode::UNAUTHORIZED, "pairing_pending", e.to_string())
        }
        PairingError::AlreadyUsed => ApiError::unauthorized(e.to_string()),
        PairingError::InvalidRefresh => ApiError::unauthorized(e.to_string()),
        PairingError::TooManyPending => {
            let mut error =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string());
            error.retry_after = Some(60);
            error
        }
        PairingError::Forbidden(m) => ApiError::forbidden(m),
        PairingError::Database(d) => ApiError::from(d),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    #[serde(default)]
    pub device_name: Option<String>,
}

/// The seed contract's `PairStartResponse`, plus the secret the device keeps for `/pair/confirm`.
#[derive(Debug, Serialize)]
pub struct StartResponse {
    pub pairing_code: String,
    pub expires_in_seconds: i64,
    pub pairing_secret: String,
}

pub async fn start(
    State(state): State<AppState>,
    client: ClientIp,
    OptionalJson(body): OptionalJson<StartRequest>,
) -> ApiResult<Json<StartResponse>> {
    rate_limit(&state, client, Budget::Pairing)?;
    let name = body.device_name.unwrap_or_default();
    check_name(&name, "device_name")?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let started = pairing::start(
        &state.pool,
        &client.0.to_string(),
        &name,
        state.clock.now(),
        &mut rng,
    )
    .await
    .map_err(pairing_error)?;
    Ok(Json(StartResponse {
        pairing_code: started.code,
        expires_in_seconds: started.expires_in.num_seconds(),
        pairing_secret: started.secret.to_string(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    pub pairing_code: String,
    pub device_name: String,
    /// Required for codes from `/pair/start`; a console setup code has none.
    #[serde(default)]
    pub pairing_secret: Option<String>,
    /// `tokens` (default): access and refresh tokens in the body, for the CLI and scripts.
    /// `cookie`: a browser session — an HttpOnly session cookie and a CSRF cookie, no tokens.
    #[serde(default)]
    pub session: Option<SessionKind>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Tokens,
    Cookie,
}

/// What a browser gets from `/pair/confirm` with `session: cookie` (the secrets are in cookies).
#[derive(Debug, Serialize)]
pub struct CookieSessionStarted {
    pub session: &'static str,
    pub expires_in_seconds: i64,
}

/// The seed contract's `AuthTokens`.
#[derive(Debug, Serialize)]
pub struct AuthTokens {
    pub access_token: String,
    pub expires_in_seconds: i64,
    pub refresh_token: String,
}

impl From<Tokens> for AuthTokens {
    fn from(t: Tokens) -> Self {
        Self {
            access_token: t.access.to_string(),
            expires_in_seconds: t.access_expires_in.num_seconds(),
            refresh_token: t.refresh.to_string(),
        }
    }
}

pub async fn confirm(
    State(state): State<AppState>,
    client: ClientIp,
    ApiJson(body): ApiJson<ConfirmRequest>,
) -> ApiResult<Response> {
    rate_limit(&state, client, Budget::Pairing)?;
    check_name(&body.device_name, "device_name")?;
    if body.device_name.trim().is_empty() {
        return Err(ApiError::validation("device_name must not be empty"));
    }
    let now = state.clock.now();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let web = body.session == Some(SessionKind::Cookie);
    let result = pairing::confirm(
        &state.pool,
        &body.pairing_code,
        body.pairing_secret.as_deref(),
        &body.device_name,
        web,
        now,
        &mut rng,
    )
    .await;
    match result {
        Ok((_, tokens, web_session)) => {
            state
                .limits
                .lockout
                .record_success(&crate::ratelimit::limit_key(client.0));
            match web_session {
                Some(web) => {
                    let mut headers = axum::http::HeaderMap::new();
                    super::sso::set_session_cookies(&state, &mut headers, &web);
                    headers.insert(
                        axum::http::header::CACHE_CONTROL,
                        axum::http::HeaderValue::from_static("no-store"),
                    );
                    Ok((
                        headers,
                        Json(CookieSessionStarted {
                            session: "cookie",
                            expires_in_seconds: web.expires_in.num_seconds(),
                        }),
                    )
                        .into_response())
                }
                None => Ok(Json(AuthTokens::from(tokens)).into_response()),
            }
        }
        Err(e) => {
            if !matches!(e, PairingError::NotApproved | PairingError::Database(_)) {
                state
                    .limits
                    .lockout
                    .record_failure(&crate::ratelimit::limit_key(client.0), now);
                record_failure(&state, client, "pairing.confirm", &e.to_string()).await;
            }
            Err(match e {
                // At confirmation a withdrawn approval is a failed sign-in, not a permission
                // question about the (anonymous) caller.
                PairingError::Forbidden(m) => ApiError::unauthorized(m),
                other => pairing_error(other),
            })
        }
    }
}

/// Audits a refused sign-in in its own transaction (nothing else changed).
pub(super) async fn record_failure(
    state: &AppState,
    client: ClientIp,
    action: &'static str,
    why: &str,
) {
    let now = state.clock.now();
    let actor = Actor::Anonymous {
        client: client.0.to_string(),
    };
    let result = async {
        let mut tx = state.pool.begin().await?;
        audit::record(
            &mut tx,
            now,
            AuditEvent {
                actor: &actor,
                action,
                target_kind: "pairing",
                target_id: String::new(),
                reason: Some(why),
                outcome: Outcome::Denied,
                detail: json!({}),
            },
        )
        .await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not audit a refused sign-in");
    }
}

#[derive(Debug, Serialize)]
pub struct PairingList {
    pub items: Vec<pairing::PendingPairing>,
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<PairingList>> {
    principal.authorize(Action::PairingsApprove)?;
    let items = pairing::list_pending(&state.pool, state.clock.now()).await?;
    Ok(Json(PairingList { items }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    pub pairing_code: String,
    pub role: Role,
    pub device_name: String,
    /// Label selector limiting the device's role to matching nodes. A scoped approver's own
    /// scope is always applied; it cannot grant beyond it.
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Approved {
    pub pairing_id: Uuid,
}

pub async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ApproveRequest>,
) -> ApiResult<Json<Approved>> {
    principal.authorize(Action::PairingsApprove)?;
    check_name(&body.device_name, "device_name")?;
    if body.device_name.trim().is_empty() {
        return Err(ApiError::validation("device_name must not be empty"));
    }
    let scope = effective_scope(&principal, body.scope.as_deref())?;
    super::roles::ensure_exists(&state, &body.role).await?;
    let pairing_id = pairing::approve(
        &state.pool,
        &principal.actor,
        &principal.role,
        pairing::Approval {
            code: &body.pairing_code,
            role: body.role,
            device_name: &body.device_name,
            scope: &scope,
        },
        state.clock.now(),
    )
    .await
    .map_err(|e| match e {
        PairingError::UnknownCode => ApiError::not_found("no pending pairing with that code"),
        other => pairing_error(other),
    })?;
    Ok(Json(Approved { pairing_id }))
}

/// The scope a principal may grant: its own if it is scoped (a requested scope must then equal
/// it), else any valid selector. Returned in canonical text form.
pub fn effective_scope(principal: &Principal, requested: Option<&str>) -> ApiResult<String> {
    let requested = requested.map(str::trim).unwrap_or("");
    if requested.len() > 1000 {
        return Err(ApiError::validation(
            "scope must be at most 1000 characters",
        ));
    }
    let parsed = Selector::parse(requested).map_err(ApiError::validation)?;
    if principal.is_scoped() {
        if !requested.is_empty() && parsed != principal.scope {
            return Err(ApiError::forbidden(
                "a scoped principal can only grant its own scope",
            ));
        }
        return Ok(principal.scope.to_string());
    }
    Ok(parsed.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

pub async fn refresh(
    State(state): State<AppState>,
    client: ClientIp,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<Response> {
    rate_limit(&state, client, Budget::Refresh)?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let now = state.clock.now();
    let key = crate::ratelimit::limit_key(client.0);
    let tokens = match pairing::refresh(&state.pool, &body.refresh_token, now, &mut rng).await {
        Ok(tokens) => {
            state.limits.lockout.record_success(&key);
            tokens
        }
        Err(e) => {
            if matches!(e, PairingError::InvalidRefresh) {
                state.limits.lockout.record_failure(&key, now);
                record_failure(&state, client, "session.refresh", &e.to_string()).await;
            }
            return Err(pairing_error(e));
        }
    };
    Ok(Json(AuthTokens::from(tokens)).into_response())
}

pub async fn logout(State(state): State<AppState>, principal: Principal) -> ApiResult<Response> {
    let session_id = principal.session_id.ok_or_else(|| {
        ApiError::bad_request("only sessions log out; revoke API tokens at /v1/api-tokens")
    })?;
    pairing::logout(&state.pool, &principal.actor, session_id, state.clock.now()).await?;
    // A browser also forgets its cookies.
    let mut headers = axum::http::HeaderMap::new();
    for name in [super::extract::SESSION_COOKIE, super::extract::CSRF_COOKIE] {
        if let Ok(value) = axum::http::HeaderValue::from_str(&format!(
            "{name}=; Path=/; Max-Age=0; SameSite=Strict"
        )) {
            headers.append(axum::http::header::SET_COOKIE, value);
        }
    }
    Ok((StatusCode::NO_CONTENT, headers).into_response())
}

#[derive(Debug, Serialize)]
pub struct Me {
    pub kind: &'static str,
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Label selector the role is limited to; empty for the whole fleet.
    pub scope: String,
    /// What the role allows, as `object:action` (e.g. `commands:create`), so a client can leave
    /// out what the caller may not do (the server still checks every request).
    pub permissions: Vec<String>,
}

pub async fn me(principal: Principal) -> ApiResult<Json<Me>> {
    principal.authorize(Action::SelfRead)?;
    let name = match &principal.actor {
        Actor::ApiToken { name, .. } | Actor::Device { name, .. } | Actor::SsoUser { name, .. } => {
            name.clone()
        }
        other => other.id(),
    };
    Ok(Json(Me {
        kind: principal.actor.kind(),
        id: principal.actor.id(),
        name,
        role: principal.role.clone(),
        scope: principal.scope.to_string(),
        permissions: Action::ALL
            .iter()
            .filter(|a| principal.authz.allows(&principal.role, **a))
            .map(|a| {
                let (object, action) = crate::rbac::permission(*a);
                format!("{object}:{action}")
            })
            .collect(),
    }))
}
