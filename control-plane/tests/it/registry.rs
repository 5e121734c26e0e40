//! The fleet registry against Postgres: the status filter agrees with the Rust rule, pagination
//! is complete and stable, and label changes are audited in the same transaction.

use axum::http::StatusCode;
use chrono::Duration;
use moltops_server::auth::Role;
use moltops_server::fleet::NodeStatus;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{call, state, t0, token};

async fn insert_node(
    pool: &PgPool,
    id: Uuid,
    connected: bool,
    last_seen_ago: Option<i64>,
    revoked: bool,
) {
    sqlx::query(
        "insert into nodes (id, hostname, labels, enrolled_at, connected, last_seen, certificate_serial,
                            certificate_not_after, revoked_at)
         values ($1, $2, $3, $4, $5, $6, 'serial', $4 + interval '1 day', $7)",
    )
    .bind(id)
    .bind(format!("host-{id}"))
    .bind(serde_json::json!({ "env": if id.as_u128().is_multiple_of(2) { "prod" } else { "dev" } }))
    .bind(t0())
    .bind(connected)
    .bind(last_seen_ago.map(|s| t0() - Duration::seconds(s)))
    .bind(revoked.then_some(t0()))
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn the_status_filter_in_sql_agrees_with_the_derived_status(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let viewer = token(&state, Role::Viewer).await;
    // Every combination of connected × last seen (recent, stale, never) × revoked.
    let mut n = 0u128;
    for connected in [true, false] {
        for seen in [Some(5), Some(31), None] {
            for revoked in [true, false] {
                n += 1;
                insert_node(&pool, Uuid::from_u128(n), connected, seen, revoked).await;
            }
        }
    }
    let (_, all) = call(&state, "GET", "/v1/nodes", Some(&viewer), None).await;
    let all = all["items"].as_array().unwrap().clone();
    assert_eq!(all.len(), 12);
    for status in [NodeStatus::Online, NodeStatus::Offline, NodeStatus::Revoked] {
        let (code, filtered) = call(
            &state,
            "GET",
            &format!("/v1/nodes?status={}", status.as_str()),
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        let mut ids: Vec<&str> = filtered["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        let mut expected: Vec<&str> = all
            .iter()
            .filter(|n| n["status"] == status.as_str())
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        ids.sort();
        expected.sort();
        assert_eq!(ids, expected, "{status:?}");
    }
    let online: Vec<_> = all.iter().filter(|n| n["status"] == "online").collect();
    assert_eq!(
        online.len(),
        1,
        "only connected + recent + not revoked is online"
    );
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn cursor_pagination_visits_every_node_once(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let viewer = token(&state, Role::Viewer).await;
    for i in 1..=7u128 {
        insert_node(&pool, Uuid::from_u128(i), true, Some(1), false).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/nodes?limit=3&cursor={c}"),
            None => "/v1/nodes?limit=3".to_owned(),
        };
        let (status, page) = call(&state, "GET", &path, Some(&viewer), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (1..=7u128)
        .map(|i| Uuid::from_u128(i).to_string())
        .collect();
    assert_eq!(seen, expected);

    let (_, prod) = call(
        &state,
        "GET",
        "/v1/nodes?selector=env%3Dprod",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(prod["items"].as_array().unwrap().len(), 3);
    let (_, not_prod) = call(
        &state,
        "GET",
        "/v1/nodes?selector=env!%3Dprod",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(not_prod["items"].as_array().unwrap().len(), 4);
    let (_, has_env) = call(&state, "GET", "/v1/nodes?selector=env", Some(&viewer), None).await;
    assert_eq!(has_env["items"].as_array().unwrap().len(), 7);
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn label_changes_are_validated_and_audited(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let admin = token(&state, Role::Admin).await;
    let id = Uuid::from_u128(2);
    insert_node(&pool, id, true, Some(1), false).await;
    let path = format!("/v1/nodes/{id}");
    let (status, node) = call(
        &state,
        "PATCH",
        &path,
        Some(&admin),
        Some(r#"{"labels": {"env": "staging", "tier": "edge"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{node}");
    assert_eq!(
        node["labels"],
        serde_json::json!({ "env": "staging", "tier": "edge" })
    );
    let (status, _) = call(
        &state,
        "PATCH",
        &path,
        Some(&admin),
        Some(r#"{"labels": {"env": "has space"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let detail: serde_json::Value =
        sqlx::query_scalar("select detail from audit_events where action = 'node.update_labels'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(detail["before"], serde_json::json!({ "env": "prod" }));
    assert_eq!(detail["after"]["tier"], "edge");
    let rows: i64 =
        sqlx::query_scalar("select count(*) from audit_events where action = 'node.update_labels'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, 1, "the refused change wrote nothing");
}
