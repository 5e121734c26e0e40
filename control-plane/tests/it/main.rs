//! Integration tests of moltops-server: the router in-process (`oneshot`, no socket) against a
//! fresh Postgres database per test (`#[sqlx::test]`), and the contract test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod audit;
mod audit_walk;
mod confirm;
mod contract;
mod deadlines;
mod jobs;
mod matrix;
mod pairing;
mod probes;
mod registry;
mod roles;
mod web;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Utc};
use moltops_server::auth::{Actor, Role};
use moltops_server::ca::CertificateAuthority;
use moltops_server::clock::ManualClock;
use moltops_server::fleet::Liveness;
use moltops_server::hub::Hub;
use moltops_server::serve::{AppState, Settings};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;

pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// A state over `pool` with a manual clock at [`t0`] and a fresh CA.
pub async fn state(pool: PgPool) -> (AppState, ManualClock) {
    let clock = ManualClock::new(t0());
    let (ca, _) = CertificateAuthority::generate(t0()).unwrap();
    let authz = moltops_server::rbac::Authz::load(&pool).await.unwrap();
    let signer = moltops_server::audit_keys::Signer::load_or_create(
        &pool,
        &moltops_server::crypto::KeyEncryptionKey::from_bytes([1; 32]),
        t0(),
        &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1),
    )
    .await
    .unwrap();
    let state = AppState {
        authz,
        pool,
        clock: Arc::new(clock.clone()),
        ca: Arc::new(ca),
        hub: Hub::default(),
        settings: Arc::new(Settings {
            heartbeat_interval: std::time::Duration::from_secs(10),
            liveness: Liveness {
                window: chrono::Duration::seconds(30),
            },
            agent_certificate_lifetime: chrono::Duration::hours(24),
            grpc_advertise: "cp.example:7338".into(),
            grpc_server_names: vec!["cp.example".into()],
            trusted_proxies: vec!["10.9.9.9".parse().unwrap()],
            web_dir: None,
        }),
        limits: Arc::new(moltops_server::serve::Limits::default()),
        signer,
        sso: Arc::new(
            moltops_server::oidc::Sso::new(Vec::new(), Some("http://cp.example:7337".into()))
                .unwrap(),
        ),
        draining: tokio_util::sync::CancellationToken::new(),
    };
    (state, clock)
}

pub async fn token(state: &AppState, role: Role) -> String {
    scoped_token(state, role, "").await
}

/// An API token whose role applies only to nodes matching `scope`.
pub async fn scoped_token(state: &AppState, role: Role, scope: &str) -> String {
    let created = moltops_server::api_tokens::create(
        &state.pool,
        &Actor::System { what: "test" },
        &format!("test-{role}-{scope}"),
        role,
        scope,
        None,
        state.clock.now(),
    )
    .await
    .unwrap();
    created.secret.to_string()
}

/// Sends one request through the router, from 192.0.2.1.
pub async fn call(
    state: &AppState,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    call_from(state, "192.0.2.1:40000", &[], method, path, token, body)
        .await
        .0
}

/// A destructive call: expects 428 with a confirmation token, then repeats it with the token.
pub async fn call_confirmed(
    state: &AppState,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let (status, answer) = call(state, method, path, token, body).await;
    if status != StatusCode::PRECONDITION_REQUIRED {
        return (status, answer);
    }
    let confirmation = answer["confirmation_token"].as_str().unwrap().to_owned();
    call_from(
        state,
        "192.0.2.1:40000",
        &[("x-confirmation-token", &confirmation)],
        method,
        path,
        token,
        body,
    )
    .await
    .0
}

/// Sends one request from `peer` with extra `headers`; also returns the response headers.
pub async fn call_from(
    state: &AppState,
    peer: &str,
    headers: &[(&str, &str)],
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> ((StatusCode, Value), axum::http::HeaderMap) {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if let Some(t) = token {
        builder = builder.header("authorization", format!("Bearer {t}"));
    }
    let request = match body {
        Some(b) => builder
            .header("content-type", "application/json")
            .body(Body::from(b.to_owned())),
        None => builder.body(Body::empty()),
    }
    .unwrap();
    let peer = moltops_server::http_tls::ClientAddr(peer.parse().unwrap());
    let router = moltops_server::http::router(state.clone())
        .layer(axum::extract::connect_info::MockConnectInfo(peer));
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let response_headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        // JSON, or (an export's JSON Lines, a page) the text itself.
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    ((status, value), response_headers)
}
