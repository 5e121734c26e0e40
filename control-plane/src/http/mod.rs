//! The REST API on the HTTP port. Every route is registered through [`RouteTable::add`], which
//! also records `(method, path)`, so a test can prove the router and `api/openapi.yaml` agree.

mod api_tokens;
mod audit;
mod confirm;
mod enrollment_tokens;
pub mod error;
pub mod extract;
mod gateway;
mod jobs;
mod nodes;
mod pairing;
mod roles;
mod sso;
mod system;
mod users;
mod web;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub use crate::serve::AppState;
use error::ApiError;

/// Request bodies above this are refused with 413 (in the envelope, by the extractors).
const MAX_BODY_BYTES: usize = 256 * 1024;

/// One registered operation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Operation {
    pub method: String,
    pub path: &'static str,
}

struct RouteTable {
    router: Router<AppState>,
    operations: Vec<Operation>,
}

impl RouteTable {
    fn add(mut self, method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Self {
        self.operations.push(Operation {
            method: method.as_str().to_ascii_lowercase(),
            path,
        });
        self.router = self.router.route(path, handler);
        self
    }
}

fn table() -> RouteTable {
    RouteTable {
        router: Router::new(),
        operations: Vec::new(),
    }
    .add(Method::GET, "/health", get(system::health))
    .add(Method::GET, "/ready", get(system::ready))
    .add(Method::POST, "/pair/start", post(pairing::start))
    .add(Method::POST, "/pair/confirm", post(pairing::confirm))
    .add(Method::GET, "/v1/pairings", get(pairing::list))
    .add(Method::POST, "/v1/pairings/approve", post(pairing::approve))
    .add(Method::POST, "/v1/auth/refresh", post(pairing::refresh))
    .add(Method::POST, "/v1/auth/logout", post(pairing::logout))
    .add(Method::GET, "/v1/me", get(pairing::me))
    .add(Method::GET, "/v1/auth/providers", get(sso::providers))
    .add(
        Method::GET,
        "/v1/auth/role-mappings",
        get(sso::role_mappings),
    )
    .add(
        Method::GET,
        "/v1/auth/oidc/{provider}/login",
        get(sso::login),
    )
    .add(
        Method::GET,
        "/v1/auth/oidc/{provider}/callback",
        get(sso::callback),
    )
    .add(
        Method::POST,
        "/v1/auth/oidc/{provider}/cli",
        post(sso::cli_start),
    )
    .add(Method::POST, "/v1/auth/cli/approve", post(sso::cli_approve))
    .add(Method::POST, "/v1/auth/cli/poll", post(sso::cli_poll))
    .add(Method::GET, "/v1/users", get(users::list))
    .add(Method::PATCH, "/v1/users/{user_id}", patch(users::change))
    .add(Method::DELETE, "/v1/users/{user_id}", delete(users::remove))
    .add(
        Method::GET,
        "/v1/users/{user_id}/sessions",
        get(users::sessions),
    )
    .add(Method::GET, "/v1/audit", get(audit::list))
    .add(Method::GET, "/v1/audit/export", get(audit::export))
    .add(Method::GET, "/v1/audit/verify", get(audit::verify))
    .add(Method::POST, "/v1/audit/verify", post(audit::verify_with))
    .add(
        Method::GET,
        "/v1/audit/checkpoints",
        get(audit::checkpoints),
    )
    .add(
        Method::POST,
        "/v1/audit/checkpoints",
        post(audit::create_checkpoint),
    )
    .add(Method::GET, "/v1/roles", get(roles::list))
    .add(Method::PUT, "/v1/roles/{role}", put(roles::put))
    .add(Method::DELETE, "/v1/roles/{role}", delete(roles::remove))
    .add(Method::GET, "/v1/api-tokens", get(api_tokens::list))
    .add(Method::POST, "/v1/api-tokens", post(api_tokens::create))
    .add(
        Method::DELETE,
        "/v1/api-tokens/{token_id}",
        delete(api_tokens::revoke),
    )
    .add(Method::GET, "/v1/ca", get(system::certificate_authority))
    .add(
        Method::POST,
        "/v1/enrollment-tokens",
        post(enrollment_tokens::create),
    )
    .add(
        Method::GET,
        "/v1/enrollment-tokens",
        get(enrollment_tokens::list),
    )
    .add(
        Method::DELETE,
        "/v1/enrollment-tokens/{token_id}",
        delete(enrollment_tokens::revoke),
    )
    .add(Method::GET, "/v1/nodes", get(nodes::list))
    .add(Method::GET, "/v1/fleet/summary", get(nodes::summary))
    .add(
        Method::GET,
        "/v1/nodes/{node_id}/metrics/current",
        get(nodes::metrics),
    )
    .add(Method::GET, "/v1/nodes/{node_id}", get(nodes::get_one))
    .add(
        Method::PATCH,
        "/v1/nodes/{node_id}",
        patch(nodes::update_labels),
    )
    .add(
        Method::POST,
        "/v1/nodes/{node_id}/revoke",
        post(nodes::revoke),
    )
    .add(
        Method::GET,
        "/v1/nodes/{node_id}/system/info",
        get(nodes::system_info),
    )
    .add(Method::POST, "/v1/nodes/{node_id}/ping", post(nodes::ping))
    .add(
        Method::POST,
        "/v1/nodes/{node_id}/install/local",
        post(gateway::install),
    )
    .add(
        Method::POST,
        "/v1/nodes/{node_id}/ops/action",
        post(gateway::ops_action),
    )
    .add(
        Method::GET,
        "/v1/nodes/{node_id}/moltbot/status",
        get(gateway::status),
    )
    .add(Method::GET, "/v1/jobs", get(jobs::list))
    .add(Method::GET, "/v1/jobs/{job_id}", get(jobs::get))
    .add(Method::GET, "/v1/jobs/{job_id}/events", get(jobs::events))
    .add(Method::POST, "/v1/jobs/{job_id}/cancel", post(jobs::cancel))
    .add(
        Method::GET,
        "/v1/nodes/{node_id}/commands/{command_id}",
        get(nodes::get_command),
    )
}

/// Every operation the router serves, for the contract test.
pub fn operations() -> Vec<Operation> {
    let mut ops = table().operations;
    ops.sort();
    ops
}

/// The complete REST router.
pub fn router(state: AppState) -> Router {
    table()
        .router
        .fallback(web::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // API responses carry state and sometimes secrets (tokens shown once): never cache them.
        .layer(SetResponseHeaderLayer::if_not_present(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_id,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Every request gets an id — a trusted proxy's `X-Request-Id` if it is short and plain, else a
/// fresh one — echoed in the response and written to the audit rows it causes. (A client cannot
/// choose the id its actions are recorded under.)
async fn request_id(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use crate::http_tls::ClientAddr;
    use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
    let extensions = request.extensions();
    let peer = extensions
        .get::<ConnectInfo<ClientAddr>>()
        .map(|c| c.0.0)
        .or_else(|| {
            extensions
                .get::<MockConnectInfo<ClientAddr>>()
                .map(|m| m.0.0)
        });
    let from_proxy = peer.is_some_and(|p| state.settings.trusted_proxies.contains(&p.ip()));
    let id = request
        .headers()
        .get("x-request-id")
        .filter(|_| from_proxy)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let mut response = crate::audit::REQUEST_ID
        .scope(id.clone(), next.run(request))
        .await;
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}
