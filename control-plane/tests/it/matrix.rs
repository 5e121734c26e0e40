//! The permission matrix: every principal × every REST operation × (for node-scoped operations)
//! a node inside and a node outside the principal's scope, against a hand-written table of who
//! may do what. A route without a row here fails `every_route_is_in_the_matrix`, so a new route
//! cannot ship without a decision about who may call it.

use axum::http::StatusCode;
use moltops_server::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{call, scoped_token, state, token};

/// Who may call an operation: anyone, or at least this role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Anyone,
    Viewer,
    Admin,
    Owner,
}

/// Whether an operation acts on one node (then scope applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Fleet,
    Node,
    /// Spans the whole fleet: refused to scoped principals whatever their role.
    Unscoped,
}

const OTHER: &str = "01890000-0000-7000-8000-0000000000bb";

struct Row {
    method: &'static str,
    route: &'static str,
    body: Option<&'static str>,
    needs: Needs,
    target: Target,
}

/// Bodies are valid, so that a refusal can only come from authentication or authorization.
fn matrix() -> Vec<Row> {
    use Needs::*;
    use Target::*;
    let row = |method, route, body, needs, target| Row {
        method,
        route,
        body,
        needs,
        target,
    };
    vec![
        row("get", "/health", None, Anyone, Fleet),
        row("post", "/pair/start", None, Anyone, Fleet),
        row("post", "/pair/confirm", Some("{}"), Anyone, Fleet),
        row("post", "/v1/auth/refresh", Some("{}"), Anyone, Fleet),
        row("get", "/v1/me", None, Viewer, Fleet),
        row("post", "/v1/auth/logout", None, Viewer, Fleet),
        row("get", "/v1/ca", None, Viewer, Fleet),
        row("get", "/v1/enrollment-tokens", None, Viewer, Fleet),
        row(
            "post",
            "/v1/enrollment-tokens",
            Some(r#"{"labels": {"env": "staging"}}"#),
            Admin,
            Fleet,
        ),
        row(
            "delete",
            "/v1/enrollment-tokens/{token_id}",
            None,
            Admin,
            Fleet,
        ),
        row("get", "/v1/nodes", None, Viewer, Fleet),
        row("get", "/v1/nodes/{node_id}", None, Viewer, Node),
        row(
            "patch",
            "/v1/nodes/{node_id}",
            Some(r#"{"labels": {"env": "staging"}}"#),
            Admin,
            Node,
        ),
        row("post", "/v1/nodes/{node_id}/revoke", None, Admin, Node),
        row("get", "/v1/nodes/{node_id}/system/info", None, Viewer, Node),
        row("post", "/v1/nodes/{node_id}/ping", None, Admin, Node),
        row(
            "get",
            "/v1/nodes/{node_id}/commands/{command_id}",
            None,
            Viewer,
            Node,
        ),
        row("get", "/v1/pairings", None, Admin, Fleet),
        row(
            "post",
            "/v1/pairings/approve",
            Some(r#"{"pairing_code": "AAAA-AAAA", "role": "viewer", "device_name": "x"}"#),
            Admin,
            Fleet,
        ),
        row("get", "/v1/users", None, Admin, Unscoped),
        row(
            "patch",
            "/v1/users/{user_id}",
            Some(r#"{"role": "viewer"}"#),
            Owner,
            Fleet,
        ),
        row("delete", "/v1/users/{user_id}", None, Owner, Fleet),
        row("get", "/v1/users/{user_id}/sessions", None, Admin, Unscoped),
        row("get", "/v1/api-tokens", None, Owner, Fleet),
        row(
            "post",
            "/v1/api-tokens",
            Some(r#"{"name": "m", "role": "viewer"}"#),
            Owner,
            Fleet,
        ),
        row("delete", "/v1/api-tokens/{token_id}", None, Owner, Fleet),
    ]
}

/// A principal: its role (None = anonymous) and whether it is scoped to `env=staging`.
#[derive(Debug, Clone, Copy)]
struct Who {
    role: Option<Role>,
    scoped: bool,
}

fn expected(row: &Row, who: Who, own_node: bool) -> bool {
    let rank = |r: Role| match r {
        Role::Viewer => 1,
        Role::Admin => 2,
        Role::Owner => 3,
    };
    let role_ok = match (row.needs, who.role) {
        (Needs::Anyone, _) => true,
        (_, None) => false,
        (Needs::Viewer, Some(r)) => rank(r) >= 1,
        (Needs::Admin, Some(r)) => rank(r) >= 2,
        (Needs::Owner, Some(r)) => rank(r) >= 3,
    };
    match row.target {
        Target::Fleet => role_ok,
        Target::Node => role_ok && (!who.scoped || own_node),
        Target::Unscoped => role_ok && !who.scoped,
    }
}

#[test]
fn every_route_is_in_the_matrix() {
    let mut routed: Vec<(String, &str)> = moltops_server::http::operations()
        .into_iter()
        .map(|o| (o.method, o.path))
        .collect();
    let mut listed: Vec<(String, &str)> = matrix()
        .iter()
        .map(|r| (r.method.to_owned(), r.route))
        .collect();
    routed.sort();
    listed.sort();
    assert_eq!(
        routed, listed,
        "every route needs exactly one row in the permission matrix"
    );
}

/// A fresh node with `env` and one command on it; returns (node id, command id).
async fn node(pool: &PgPool, env: &str) -> (Uuid, Uuid) {
    let (node_id, command_id) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "insert into nodes (id, hostname, labels, enrolled_at, certificate_serial, certificate_not_after)
         values ($1, 'h', jsonb_build_object('env', $2::text), now(), 's', now() + interval '1 day')",
    )
    .bind(node_id)
    .bind(env)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into commands (id, node_id, kind, status, created_by, created_at) values ($1, $2, 'ping', 'queued', 't', now())",
    )
    .bind(command_id)
    .bind(node_id)
    .execute(pool)
    .await
    .unwrap();
    (node_id, command_id)
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn the_policy_enforced_on_every_route_matches_the_matrix(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let mut principals: Vec<(Who, Option<String>)> = vec![(
        Who {
            role: None,
            scoped: false,
        },
        None,
    )];
    for role in [Role::Viewer, Role::Admin, Role::Owner] {
        principals.push((
            Who {
                role: Some(role),
                scoped: false,
            },
            Some(token(&state, role).await),
        ));
    }
    for role in [Role::Viewer, Role::Admin] {
        principals.push((
            Who {
                role: Some(role),
                scoped: true,
            },
            Some(scoped_token(&state, role, "env=staging").await),
        ));
    }
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for row in matrix() {
        for (who, bearer) in &principals {
            let objects: &[bool] = if row.target == Target::Node {
                &[true, false]
            } else {
                &[true]
            };
            for &own in objects {
                let (node_id, command_id) = node(&pool, if own { "staging" } else { "prod" }).await;
                let path = row
                    .route
                    .replace("{node_id}", &node_id.to_string())
                    .replace("{command_id}", &command_id.to_string())
                    .replace("{token_id}", OTHER)
                    .replace("{user_id}", OTHER);
                let (status, response) = call(
                    &state,
                    &row.method.to_uppercase(),
                    &path,
                    bearer.as_deref(),
                    row.body,
                )
                .await;
                // On an existing node, allowed means success; elsewhere, anything but a refusal
                // of the caller (the objects there may legitimately not exist).
                let allowed = match row.target {
                    Target::Node => status.is_success(),
                    Target::Fleet | Target::Unscoped => {
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN
                    }
                };
                checked += 1;
                if allowed != expected(&row, *who, own) || status.is_server_error() {
                    mismatches.push(format!(
                        "{} {} as {who:?} on {} node: {status} {response}",
                        row.method,
                        row.route,
                        if own { "own" } else { "foreign" }
                    ));
                }
            }
        }
    }
    assert!(checked >= 150, "{checked}");
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn a_scoped_admin_lists_only_its_nodes_and_cannot_grant_beyond_its_scope(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let scoped = scoped_token(&state, Role::Admin, "env=staging").await;
    let (own, _) = node(&pool, "staging").await;
    node(&pool, "prod").await;
    let (_, list) = call(&state, "GET", "/v1/nodes", Some(&scoped), None).await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![own.to_string()]);
    let (_, none) = call(
        &state,
        "GET",
        "/v1/nodes?selector=env%3Dprod",
        Some(&scoped),
        None,
    )
    .await;
    assert_eq!(none["items"].as_array().unwrap().len(), 0);
    let (_, me) = call(&state, "GET", "/v1/me", Some(&scoped), None).await;
    assert_eq!(me["scope"], "env=staging");
    assert_eq!(
        call(&state, "GET", "/v1/users", Some(&scoped), None)
            .await
            .0,
        StatusCode::FORBIDDEN,
        "users span the fleet"
    );

    // Enrollment tokens only into its scope; moving a node out of scope is refused.
    let (status, _) = call(
        &state,
        "POST",
        "/v1/enrollment-tokens",
        Some(&scoped),
        Some(r#"{"labels": {"env": "prod"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &state,
        "PATCH",
        &format!("/v1/nodes/{own}"),
        Some(&scoped),
        Some(r#"{"labels": {"env": "prod"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Pairing approvals carry the approver's scope; a wider one is refused.
    let (_, started) = call(&state, "POST", "/pair/start", None, None).await;
    let code = started["pairing_code"].as_str().unwrap();
    let wider = serde_json::json!({ "pairing_code": code, "role": "viewer", "device_name": "d", "scope": "" }).to_string();
    let other = serde_json::json!({ "pairing_code": code, "role": "viewer", "device_name": "d", "scope": "env=prod" }).to_string();
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/pairings/approve",
            Some(&scoped),
            Some(&other)
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/pairings/approve",
            Some(&scoped),
            Some(&wider)
        )
        .await
        .0,
        StatusCode::OK
    );
    let confirm = serde_json::json!({
        "pairing_code": code, "device_name": "d", "pairing_secret": started["pairing_secret"]
    })
    .to_string();
    let (_, tokens) = call(&state, "POST", "/pair/confirm", None, Some(&confirm)).await;
    let (_, device) = call(
        &state,
        "GET",
        "/v1/me",
        Some(tokens["access_token"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(
        device["scope"], "env=staging",
        "the device inherits the approver's scope"
    );
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn the_policy_lives_in_postgres_and_a_changed_rule_takes_effect_on_reload(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let viewer = token(&state, Role::Viewer).await;
    assert_eq!(
        call(&state, "GET", "/v1/pairings", Some(&viewer), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    sqlx::query(
        "insert into rbac_rules (ptype, v0, v1, v2) values ('p', 'viewer', 'pairings', 'approve')",
    )
    .execute(&pool)
    .await
    .unwrap();
    state.authz.reload(&pool).await.unwrap();
    assert_eq!(
        call(&state, "GET", "/v1/pairings", Some(&viewer), None)
            .await
            .0,
        StatusCode::OK
    );
    sqlx::query("delete from rbac_rules where v0 = 'viewer'")
        .execute(&pool)
        .await
        .unwrap();
    state.authz.reload(&pool).await.unwrap();
    assert_eq!(
        call(&state, "GET", "/v1/nodes", Some(&viewer), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}
