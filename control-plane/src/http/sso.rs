//! Sign-in with OpenID Connect: the provider list, `/v1/auth/oidc/{provider}/login` and
//! `/callback` for browsers, and the device-style CLI sign-in (start, browser confirmation, poll).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{
    ApiJson, ApiPath, ApiQuery, CSRF_COOKIE, ClientIp, SESSION_COOKIE, request_cookie,
};
use super::pairing::{AuthTokens, Budget, rate_limit, record_failure};
use crate::auth::Actor;
use crate::oidc::cli::{self, CliLoginError, Poll};
use crate::oidc::{Callback, SsoError};

#[derive(Debug, Serialize)]
pub struct ProviderList {
    pub providers: Vec<ProviderInfo>,
}

#[derive(Debug, Serialize)]
pub struct ProviderInfo {
    pub name: String,
    pub display_name: String,
    pub login_url: String,
}

/// The sign-in screen's list of providers (public: names and URLs only).
pub async fn providers(State(state): State<AppState>) -> Json<ProviderList> {
    Json(ProviderList {
        providers: state
            .sso
            .providers()
            .map(|p| ProviderInfo {
                name: p.name.clone(),
                display_name: if p.display_name.is_empty() {
                    p.name.clone()
                } else {
                    p.display_name.clone()
                },
                login_url: format!("/v1/auth/oidc/{}/login", p.name),
            })
            .collect(),
    })
}

#[derive(Debug, Serialize)]
pub struct RoleMappings {
    pub providers: Vec<ProviderMapping>,
}

#[derive(Debug, Serialize)]
pub struct ProviderMapping {
    pub name: String,
    pub display_name: String,
    pub issuer: String,
    pub groups_claim: String,
    /// First match wins; a user in none of the groups gets no access.
    pub rules: Vec<crate::oidc::RoleRule>,
}

/// How each provider's groups map to roles (from `moltops.toml`, re-applied at start-up):
/// read-only here, so the web admin can show it. Needs `roles:read`.
pub async fn role_mappings(
    State(state): State<AppState>,
    principal: crate::auth::Principal,
) -> ApiResult<Json<RoleMappings>> {
    principal.authorize(crate::auth::Action::RolesRead)?;
    Ok(Json(RoleMappings {
        providers: state
            .sso
            .providers()
            .map(|p| ProviderMapping {
                name: p.name.clone(),
                display_name: if p.display_name.is_empty() {
                    p.name.clone()
                } else {
                    p.display_name.clone()
                },
                issuer: p.issuer.clone(),
                groups_claim: p.groups_claim.clone(),
                rules: p.roles.clone(),
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct ProviderPath {
    pub provider: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginQuery {
    /// A CLI sign-in this browser sign-in completes.
    #[serde(default)]
    pub cli: Option<Uuid>,
}

fn sso_error(e: SsoError) -> ApiError {
    match e {
        SsoError::UnknownProvider => ApiError::not_found("no such sign-in provider"),
        SsoError::Unavailable(m) => {
            // The detail may name internal hosts: it goes to the log, not to an anonymous caller.
            tracing::warn!(detail = %m, "identity provider unavailable");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "idp_unavailable",
                "the identity provider is unavailable; try again later",
            )
        }
        e @ (SsoError::InvalidState | SsoError::WrongBrowser) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_state", e.to_string())
        }
        e @ (SsoError::ProviderDenied(_) | SsoError::Rejected(_)) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "sso_failed", e.to_string())
        }
        e @ SsoError::NoRole => ApiError::new(StatusCode::FORBIDDEN, "no_role", e.to_string()),
        e @ SsoError::RaceLost => ApiError::conflict(format!("{e}; try again")),
        e @ SsoError::Disabled => {
            ApiError::new(StatusCode::FORBIDDEN, "user_disabled", e.to_string())
        }
        SsoError::Database(e) => e.into(),
    }
}

fn cli_error(e: CliLoginError) -> ApiError {
    match e {
        CliLoginError::TooManyPending => {
            let mut error =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string());
            error.retry_after = Some(60);
            error
        }
        CliLoginError::Unknown | CliLoginError::WrongCode => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_login", e.to_string())
        }
        CliLoginError::Expired => ApiError::new(StatusCode::GONE, "expired", e.to_string()),
        CliLoginError::Database(e) => e.into(),
    }
}

fn rng() -> rand::rngs::StdRng {
    <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng()
}

fn cookie(
    state: &AppState,
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
    same_site: &str,
    http_only: bool,
) -> HeaderValue {
    let mut text = format!("{name}={value}; Path={path}; Max-Age={max_age}; SameSite={same_site}");
    if http_only {
        text.push_str("; HttpOnly");
    }
    if state.sso.secure_cookies() {
        text.push_str("; Secure");
    }
    // Cookie values here are base64url or empty: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// Sets a browser session's cookies: the session (HttpOnly) and the CSRF token the page echoes.
pub(super) fn set_session_cookies(
    state: &AppState,
    headers: &mut axum::http::HeaderMap,
    web: &crate::pairing::WebSession,
) {
    let max_age = web.expires_in.num_seconds();
    headers.append(
        header::SET_COOKIE,
        cookie(
            state,
            SESSION_COOKIE,
            &web.cookie,
            "/",
            max_age,
            "Strict",
            true,
        ),
    );
    headers.append(
        header::SET_COOKIE,
        cookie(state, CSRF_COOKIE, &web.csrf, "/", max_age, "Strict", false),
    );
}

/// Starts a browser sign-in: 302 to the provider, with the binding cookie.
pub async fn login(
    State(state): State<AppState>,
    client: ClientIp,
    ApiPath(path): ApiPath<ProviderPath>,
    ApiQuery(query): ApiQuery<LoginQuery>,
) -> ApiResult<Response> {
    rate_limit(&state, client, Budget::Sso)?;
    let now = state.clock.now();
    state.sso.provider(&path.provider).map_err(sso_error)?;
    if let Some(id) = query.cli {
        cli::pending(&state.pool, id, &path.provider, now)
            .await
            .map_err(cli_error)?;
    }
    let (url, cookie_name, verifier) = state
        .sso
        .begin(&state.pool, &path.provider, query.cli, now, &mut rng())
        .await
        .map_err(sso_error)?;
    let location = HeaderValue::from_str(&url)
        .map_err(|_| ApiError::internal("authorization URL is not a valid header"))?;
    let mut headers = HeaderMap::new();
    headers.insert(header::LOCATION, location);
    // Lax, not Strict: the provider's redirect back is a cross-site navigation.
    headers.append(
        header::SET_COOKIE,
        cookie(
            &state,
            &cookie_name,
            &verifier,
            &format!("/v1/auth/oidc/{}/callback", path.provider),
            crate::oidc::LOGIN_TTL.num_seconds(),
            "Lax",
            true,
        ),
    );
    Ok((StatusCode::FOUND, headers).into_response())
}

/// The provider's redirect back.
pub async fn callback(
    State(state): State<AppState>,
    client: ClientIp,
    request_headers: HeaderMap,
    ApiPath(path): ApiPath<ProviderPath>,
    ApiQuery(query): ApiQuery<Callback>,
) -> ApiResult<Response> {
    rate_limit(&state, client, Budget::Sso)?;
    let now = state.clock.now();
    let lookup = |name: &str| request_cookie(&request_headers, name);
    let signed_in = match state
        .sso
        .complete(&state.pool, &path.provider, &query, &lookup, now)
        .await
    {
        Ok(signed_in) => signed_in,
        Err(e) => {
            if !matches!(e, SsoError::Database(_) | SsoError::Unavailable(_)) {
                record_failure(&state, client, "sso.login", &e.to_string()).await;
            }
            return Err(sso_error(e));
        }
    };
    let actor = Actor::SsoUser {
        id: signed_in.user_id,
        name: signed_in.identity.email.clone(),
    };
    let mut headers = HeaderMap::new();
    // The binding cookie has done its job.
    headers.append(
        header::SET_COOKIE,
        cookie(
            &state,
            &crate::oidc::binding_cookie_name(signed_in.login_id),
            "",
            &format!("/v1/auth/oidc/{}/callback", path.provider),
            0,
            "Lax",
            true,
        ),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; form-action 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Some(cli_login) = signed_in.cli_login_id {
        let (origin, approval) =
            cli::signed_in(&state.pool, cli_login, signed_in.user_id, now, &mut rng())
                .await
                .map_err(cli_error)?;
        let from = html_escape(&origin.client_addr);
        let started = origin.created_at.format("%Y-%m-%d %H:%M:%S UTC");
        let who = html_escape(if signed_in.identity.email.is_empty() {
            &signed_in.identity.subject
        } else {
            &signed_in.identity.email
        });
        let page = format!(
            "<!doctype html><meta charset=utf-8><title>moltops: confirm CLI sign-in</title>\
             <h1>Sign in moltopsctl as {who}?</h1>\
             <p>This sign-in was started from {from} at {started}. Continue only if you started \
             it yourself: type the code your terminal shows. If someone sent you this link, close \
             this page.</p>\
             <form method=post action=\"/v1/auth/cli/approve\">\
             <input type=hidden name=login_id value=\"{cli_login}\">\
             <input type=hidden name=approval value=\"{approval}\">\
             <label>Code: <input name=user_code autocomplete=off required></label> \
             <button type=submit>Confirm sign-in</button></form>",
            approval = approval.as_str()
        );
        return Ok((StatusCode::OK, headers, page).into_response());
    }
    let (_, web) = crate::pairing::sso_session(
        &state.pool,
        signed_in.user_id,
        &actor,
        true,
        json!({ "via": "oidc", "provider": path.provider, "client": client.0.to_string() }),
        now,
        &mut rng(),
    )
    .await?;
    let web = web.ok_or_else(|| ApiError::internal("web session missing"))?;
    set_session_cookies(&state, &mut headers, &web);
    // A same-site navigation from this page, so the Strict cookie goes with the next request.
    let page = "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url=/\">\
                <title>moltops: signed in</title><p>Signed in. <a href=\"/\">Continue</a>";
    Ok((StatusCode::OK, headers, page).into_response())
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct CliLoginStarted {
    pub login_url: String,
    pub user_code: String,
    pub poll_token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub interval_seconds: i64,
}

/// The CLI starts a sign-in; it shows `user_code`, opens `login_url`, and polls.
pub async fn cli_start(
    State(state): State<AppState>,
    client: ClientIp,
    ApiPath(path): ApiPath<ProviderPath>,
) -> ApiResult<(StatusCode, Json<CliLoginStarted>)> {
    rate_limit(&state, client, Budget::Sso)?;
    state.sso.provider(&path.provider).map_err(sso_error)?;
    let now = state.clock.now();
    let started = cli::start(
        &state.pool,
        &path.provider,
        &client.0.to_string(),
        now,
        &mut rng(),
    )
    .await
    .map_err(cli_error)?;
    Ok((
        StatusCode::CREATED,
        Json(CliLoginStarted {
            login_url: format!(
                "{}/v1/auth/oidc/{}/login?cli={}",
                state.sso.public_url(),
                path.provider,
                started.id
            ),
            user_code: started.user_code,
            poll_token: started.poll_token.to_string(),
            expires_at: started.expires_at,
            interval_seconds: cli::POLL_INTERVAL_SECONDS,
        }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct ApproveForm {
    pub login_id: Uuid,
    pub approval: String,
    /// The code the terminal shows, typed by the person.
    pub user_code: String,
}

/// The browser's confirmation form.
pub async fn cli_approve(
    State(state): State<AppState>,
    client: ClientIp,
    form: Result<axum::extract::Form<ApproveForm>, axum::extract::rejection::FormRejection>,
) -> ApiResult<Response> {
    rate_limit(&state, client, Budget::Sso)?;
    let axum::extract::Form(form) = form.map_err(|e| ApiError::bad_request(e.body_text()))?;
    cli::approve(
        &state.pool,
        form.login_id,
        &form.approval,
        &form.user_code,
        state.clock.now(),
    )
    .await
    .map_err(cli_error)?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok((
        StatusCode::OK,
        headers,
        "<!doctype html><meta charset=utf-8><title>moltops: signed in</title>\
         <p>Sign-in confirmed. Return to your terminal; you may close this window.",
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    pub poll_token: String,
}

/// The CLI's poll: 202 while pending, 200 with tokens once confirmed (once).
pub async fn cli_poll(
    State(state): State<AppState>,
    client: ClientIp,
    ApiJson(body): ApiJson<PollRequest>,
) -> ApiResult<Response> {
    rate_limit(&state, client, Budget::Sso)?;
    let now = state.clock.now();
    match cli::poll(&state.pool, &body.poll_token, now)
        .await
        .map_err(cli_error)?
    {
        Poll::Pending => {
            Ok((StatusCode::ACCEPTED, Json(json!({ "status": "pending" }))).into_response())
        }
        Poll::Approved(user_id) => {
            let actor = Actor::SsoUser {
                id: user_id,
                name: String::new(),
            };
            let (tokens, _) = crate::pairing::sso_session(
                &state.pool,
                user_id,
                &actor,
                false,
                json!({ "via": "oidc-cli", "client": client.0.to_string() }),
                now,
                &mut rng(),
            )
            .await?;
            Ok(Json(AuthTokens::from(tokens)).into_response())
        }
    }
}
