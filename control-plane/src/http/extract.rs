//! Extractors that turn every malformed request into the `{code, message}` envelope, and the
//! bearer-token authenticator that yields a [`Principal`].

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::auth::{Actor, Principal, Role};
use crate::crypto::hash_secret;

/// JSON body; a syntax error is 400, a body of the wrong shape is 422, a wrong content type 415.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => ApiError::validation(e.body_text()),
                JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(e.body_text()),
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "expected a request body with Content-Type: application/json",
                ),
                other => from_rejection(other.status(), other.body_text()),
            }),
        }
    }
}

/// Maps a framework rejection (e.g. 413 from the body limit) into the envelope, keeping its status.
fn from_rejection(status: axum::http::StatusCode, text: String) -> ApiError {
    use axum::http::StatusCode;
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
        s if s.is_server_error() => return ApiError::internal(text),
        _ => "bad_request",
    };
    ApiError::new(status, code, text)
}

/// Path parameters; an id that does not parse is 404 (no such object), not 500.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(ApiError::not_found(
                format!("no such object: {}", e.body_text()),
            )),
            Err(other) => Err(ApiError::bad_request(other.body_text())),
        }
    }
}

/// Query string; anything that does not parse is 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::bad_request(e.body_text()))
            }
            Err(other) => Err(ApiError::bad_request(other.body_text())),
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // A bearer token wins; the web-session cookie is used only without one.
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            let cookie = request_cookie(&parts.headers, SESSION_COOKIE)
                .filter(|c| c.starts_with(crate::pairing::ACCESS_PREFIX))
                .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
            let csrf = if parts.method.is_safe() {
                CsrfCheck::NotNeeded
            } else {
                CsrfCheck::Header(
                    parts
                        .headers
                        .get(CSRF_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                )
            };
            return authenticate_device_session(state, &cookie, csrf).await;
        };
        let value = header
            .to_str()
            .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
        let token = value
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
        if token.starts_with(crate::pairing::ACCESS_PREFIX) {
            authenticate_device_session(state, token, CsrfCheck::NotNeeded).await
        } else {
            authenticate_api_token(state, token).await
        }
    }
}

/// The web session cookie (HttpOnly, SameSite=Strict; Secure when the public URL is HTTPS).
pub const SESSION_COOKIE: &str = "moltops_session";
/// The CSRF token cookie, readable by the page, echoed in [`CSRF_HEADER`] on every write.
pub const CSRF_COOKIE: &str = "moltops_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// One cookie's value from the request's `Cookie` headers.
pub fn request_cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

/// Whether a cookie-authenticated request must prove it came from our page.
enum CsrfCheck {
    NotNeeded,
    /// An unsafe method: the `X-CSRF-Token` header, if sent.
    Header(Option<String>),
}

/// A stored scope that no longer parses denies everything rather than granting the fleet.
fn parse_scope(scope: &str) -> Result<crate::fleet::Selector, ApiError> {
    crate::fleet::Selector::parse(scope)
        .map_err(|e| ApiError::internal(format!("stored scope is invalid: {e}")))
}

async fn authenticate_device_session(
    state: &AppState,
    token: &str,
    csrf: CsrfCheck,
) -> Result<Principal, ApiError> {
    let now = state.clock.now();
    let row = sqlx::query!(
        r#"select s.id as session_id, s.csrf_hash,
                  d.id as "device_id?", d.name as "device_name?", d.role as "device_role?",
                  d.scope as "device_scope?",
                  u.id as "user_id?", u.email as "user_email?", u.name as "user_name?",
                  u.role as "user_role?", u.scope as "user_scope?"
           from device_sessions s
           left join devices d on d.id = s.device_id and d.revoked_at is null
           left join sso_users u on u.id = s.sso_user_id and u.disabled_at is null and u.role is not null
           where s.access_hash = $1 and s.revoked_at is null and s.access_expires_at > $2
                 and (d.id is not null or u.id is not null)"#,
        hash_secret(token),
        now
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::unauthorized("invalid, expired or revoked token"))?;
    if let CsrfCheck::Header(sent) = csrf {
        let valid = match (&row.csrf_hash, sent) {
            (Some(expected), Some(sent)) => {
                crate::pairing::constant_time_eq(expected, &hash_secret(&sent))
            }
            _ => false,
        };
        if !valid {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "csrf_failed",
                "a write with the session cookie needs the X-CSRF-Token header from the moltops_csrf cookie",
            ));
        }
    }
    let (actor, role, scope) = match (row.device_id, row.user_id) {
        (Some(id), _) => (
            Actor::Device {
                id,
                name: row.device_name.unwrap_or_default(),
            },
            row.device_role,
            row.device_scope,
        ),
        (None, Some(id)) => {
            let email = row.user_email.unwrap_or_default();
            (
                Actor::SsoUser {
                    id,
                    name: if email.is_empty() {
                        row.user_name.unwrap_or_default()
                    } else {
                        email
                    },
                },
                row.user_role,
                row.user_scope,
            )
        }
        (None, None) => return Err(ApiError::unauthorized("invalid, expired or revoked token")),
    };
    let role = role
        .as_deref()
        .and_then(Role::parse)
        .ok_or_else(|| ApiError::internal("unknown role on a session's owner"))?;
    Ok(Principal {
        actor,
        role,
        session_id: Some(row.session_id),
        authz: state.authz.clone(),
        scope: parse_scope(scope.as_deref().unwrap_or_default())?,
    })
}

/// The client's address for rate limits and the audit log (see [`crate::ratelimit::client_address`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::ConnectInfo(crate::http_tls::ClientAddr(peer)) =
            axum::extract::ConnectInfo::<crate::http_tls::ClientAddr>::from_request_parts(
                parts, state,
            )
            .await
            .map_err(|_| ApiError::internal("no connection info on the request"))?;
        let peer = peer.ip();
        let forwarded: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Ok(Self(crate::ratelimit::client_address(
            peer,
            &forwarded,
            &state.settings.trusted_proxies,
        )))
    }
}

async fn authenticate_api_token(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let now = state.clock.now();
    let hash = hash_secret(token);
    let row = sqlx::query!(
        r#"select id, name, role, scope, last_used_at from api_tokens
           where token_hash = $1 and revoked_at is null and (expires_at is null or expires_at > $2)"#,
        hash,
        now
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::unauthorized("invalid, expired or revoked token"))?;
    let role =
        Role::parse(&row.role).ok_or_else(|| ApiError::internal("unknown role in api_tokens"))?;
    // Touch at most once a minute: an audit aid, not worth a write per request.
    if row
        .last_used_at
        .is_none_or(|t| now - t > chrono::Duration::seconds(60))
    {
        sqlx::query!(
            "update api_tokens set last_used_at = $2 where id = $1",
            row.id,
            now
        )
        .execute(&state.pool)
        .await?;
    }
    Ok(Principal {
        actor: Actor::ApiToken {
            id: row.id,
            name: row.name,
        },
        role,
        session_id: None,
        authz: state.authz.clone(),
        scope: parse_scope(&row.scope)?,
    })
}

/// A JSON body that may be left out entirely (then `T::default()`); if present, it is parsed
/// with the same rules as [`ApiJson`].
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let has_body = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v != "0")
            && (req.headers().contains_key(axum::http::header::CONTENT_TYPE)
                || req
                    .headers()
                    .contains_key(axum::http::header::CONTENT_LENGTH)
                || req
                    .headers()
                    .contains_key(axum::http::header::TRANSFER_ENCODING));
        if !has_body {
            return Ok(Self(T::default()));
        }
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| from_rejection(e.status(), e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        if !is_json {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request body with Content-Type: application/json",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => ApiError::validation(e.to_string()),
                _ => ApiError::bad_request(e.to_string()),
            })
    }
}
