//! The permission matrix: every principal × every REST operation, against a hand-written table
//! of who may do what. A route without a row here fails `every_route_is_in_the_matrix`, so a new
//! route cannot ship without a decision about who may call it.

use axum::http::StatusCode;
use moltops_server::auth::Role;
use sqlx::PgPool;

use crate::{call, state, token};

/// Who may call an operation: anyone, or at least this role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Anyone,
    Viewer,
    Admin,
    Owner,
}

const NODE: &str = "01890000-0000-7000-8000-0000000000aa";
const OTHER: &str = "01890000-0000-7000-8000-0000000000bb";

/// (method, route, concrete path, body, who may call it). Bodies are valid, so that a refusal can
/// only come from authentication or authorization, never from input validation.
fn matrix() -> Vec<(
    &'static str,
    &'static str,
    String,
    Option<&'static str>,
    Needs,
)> {
    use Needs::*;
    vec![
        ("get", "/health", "/health".into(), None, Anyone),
        ("post", "/pair/start", "/pair/start".into(), None, Anyone),
        (
            "post",
            "/pair/confirm",
            "/pair/confirm".into(),
            Some("{}"),
            Anyone,
        ),
        (
            "post",
            "/v1/auth/refresh",
            "/v1/auth/refresh".into(),
            Some("{}"),
            Anyone,
        ),
        ("get", "/v1/me", "/v1/me".into(), None, Viewer),
        (
            "post",
            "/v1/auth/logout",
            "/v1/auth/logout".into(),
            None,
            Viewer,
        ),
        ("get", "/v1/ca", "/v1/ca".into(), None, Viewer),
        (
            "get",
            "/v1/enrollment-tokens",
            "/v1/enrollment-tokens".into(),
            None,
            Viewer,
        ),
        (
            "post",
            "/v1/enrollment-tokens",
            "/v1/enrollment-tokens".into(),
            Some("{}"),
            Admin,
        ),
        (
            "delete",
            "/v1/enrollment-tokens/{token_id}",
            format!("/v1/enrollment-tokens/{OTHER}"),
            None,
            Admin,
        ),
        ("get", "/v1/nodes", "/v1/nodes".into(), None, Viewer),
        (
            "get",
            "/v1/nodes/{node_id}",
            format!("/v1/nodes/{NODE}"),
            None,
            Viewer,
        ),
        (
            "patch",
            "/v1/nodes/{node_id}",
            format!("/v1/nodes/{NODE}"),
            Some(r#"{"labels": {}}"#),
            Admin,
        ),
        (
            "post",
            "/v1/nodes/{node_id}/revoke",
            format!("/v1/nodes/{OTHER}/revoke"),
            None,
            Admin,
        ),
        (
            "get",
            "/v1/nodes/{node_id}/system/info",
            format!("/v1/nodes/{NODE}/system/info"),
            None,
            Viewer,
        ),
        (
            "post",
            "/v1/nodes/{node_id}/ping",
            format!("/v1/nodes/{OTHER}/ping"),
            None,
            Admin,
        ),
        (
            "get",
            "/v1/nodes/{node_id}/commands/{command_id}",
            format!("/v1/nodes/{NODE}/commands/{OTHER}"),
            None,
            Viewer,
        ),
        ("get", "/v1/pairings", "/v1/pairings".into(), None, Admin),
        (
            "post",
            "/v1/pairings/approve",
            "/v1/pairings/approve".into(),
            Some(r#"{"pairing_code": "AAAA-AAAA", "role": "viewer", "device_name": "x"}"#),
            Admin,
        ),
        (
            "get",
            "/v1/api-tokens",
            "/v1/api-tokens".into(),
            None,
            Owner,
        ),
        (
            "post",
            "/v1/api-tokens",
            "/v1/api-tokens".into(),
            Some(r#"{"name": "m", "role": "viewer"}"#),
            Owner,
        ),
        (
            "delete",
            "/v1/api-tokens/{token_id}",
            format!("/v1/api-tokens/{OTHER}"),
            None,
            Owner,
        ),
    ]
}

fn expected(needs: Needs, principal: Option<Role>) -> bool {
    let rank = |r: Role| match r {
        Role::Viewer => 1,
        Role::Admin => 2,
        Role::Owner => 3,
    };
    match (needs, principal) {
        (Needs::Anyone, _) => true,
        (_, None) => false,
        (Needs::Viewer, Some(r)) => rank(r) >= 1,
        (Needs::Admin, Some(r)) => rank(r) >= 2,
        (Needs::Owner, Some(r)) => rank(r) >= 3,
    }
}

#[test]
fn every_route_is_in_the_matrix() {
    let mut routed: Vec<(String, &str)> = moltops_server::http::operations()
        .into_iter()
        .map(|o| (o.method, o.path))
        .collect();
    let mut listed: Vec<(String, &str)> = matrix()
        .into_iter()
        .map(|(m, r, ..)| (m.to_owned(), r))
        .collect();
    routed.sort();
    listed.sort();
    assert_eq!(
        routed, listed,
        "every route needs exactly one row in the permission matrix"
    );
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn the_policy_enforced_on_every_route_matches_the_matrix(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    sqlx::query(
        "insert into nodes (id, hostname, enrolled_at, certificate_serial, certificate_not_after)
         values ($1::uuid, 'h', now(), 's', now() + interval '1 day')",
    )
    .bind(NODE)
    .execute(&pool)
    .await
    .unwrap();
    let mut principals: Vec<(Option<Role>, Option<String>)> = vec![(None, None)];
    for role in [Role::Viewer, Role::Admin, Role::Owner] {
        principals.push((Some(role), Some(token(&state, role).await)));
    }
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for (method, route, path, body, needs) in matrix() {
        for (role, bearer) in &principals {
            let (status, response) = call(
                &state,
                &method.to_uppercase(),
                &path,
                bearer.as_deref(),
                body,
            )
            .await;
            let allowed = status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN;
            checked += 1;
            if allowed != expected(needs, *role) || status.is_server_error() {
                mismatches.push(format!("{method} {route} as {role:?}: {status} {response}"));
            }
        }
    }
    assert!(checked >= 80, "{checked}");
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
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
