//! The probes: `/health` (liveness) answers while the process serves, whatever the database does;
//! `/ready` (readiness) answers 503 once this replica drains or while its database is down.

use axum::http::StatusCode;
use moltops_server::serve::AppState;
use serde_json::json;
use sqlx::PgPool;

use crate::{call, state, t0};

/// The answer is `status` with the body `{"status": body_status, "time": t0}`.
#[track_caller]
fn check(answer: (StatusCode, serde_json::Value), status: StatusCode, body_status: &str) {
    assert_eq!(
        answer,
        (status, json!({ "status": body_status, "time": t0() }))
    );
}

async fn get(state: &AppState, path: &str) -> (StatusCode, serde_json::Value) {
    call(state, "GET", path, None, None).await
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn a_serving_replica_is_live_and_ready(pool: PgPool) {
    let (state, _) = state(pool).await;
    check(get(&state, "/health").await, StatusCode::OK, "ok");
    check(get(&state, "/ready").await, StatusCode::OK, "ready");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn a_draining_replica_is_live_but_not_ready(pool: PgPool) {
    let (state, _) = state(pool).await;
    state.draining.cancel();
    check(
        get(&state, "/ready").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "draining",
    );
    check(get(&state, "/health").await, StatusCode::OK, "ok");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn without_its_database_a_replica_is_live_but_not_ready(pool: PgPool) {
    let (state, _) = state(pool).await;
    state.pool.close().await;
    check(get(&state, "/health").await, StatusCode::OK, "ok");
    check(
        get(&state, "/ready").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    // Draining says more than a database outage: the replica is going away either way.
    state.draining.cancel();
    check(
        get(&state, "/ready").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "draining",
    );
}
