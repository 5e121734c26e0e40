//! The permission matrix: every principal × every REST operation × (for node-scoped operations)
//! a node inside and a node outside the principal's scope, against a hand-written table of who
//! may do what. A route without a row here fails `every_route_is_in_the_matrix`, so a new route
//! cannot ship without a decision about who may call it.
//!
//! Principals come through every way in: API tokens, a paired device's session, an SSO user's
//! token session and browser cookie session (with its CSRF header), a label-scoped token, and a
//! custom role. Agents have no REST identity (their certificate only opens the gRPC stream, see
//! the end-to-end `stream_rules` and `mtls` tests), so they are the anonymous row here.

use axum::http::StatusCode;
use moltops_server::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{call, call_from, scoped_token, state, token};

/// Every kind of principal, each with the credential it would really use.
async fn principals(state: &moltops_server::serve::AppState) -> Vec<(Who, Auth)> {
    let who = |how, role: Option<Role>, scoped| Who { how, role, scoped };
    let mut out = vec![(who("anonymous (or an agent)", None, false), Auth::None)];
    for role in [Role::Viewer, Role::Admin, Role::Owner] {
        out.push((
            who("api token", Some(role.clone()), false),
            Auth::Bearer(token(state, role).await),
        ));
    }
    for role in [Role::Viewer, Role::Admin] {
        out.push((
            who("scoped api token", Some(role.clone()), true),
            Auth::Bearer(scoped_token(state, role, "env=staging").await),
        ));
    }
    // A custom role: viewer's permissions plus nodes/write.
    let owner = token(state, Role::Owner).await;
    let (status, body) = call(
        state,
        "PUT",
        "/v1/roles/operator",
        Some(&owner),
        Some(
            r#"{"description": "labels nodes", "permissions": [
                {"object": "nodes", "action": "read"}, {"object": "nodes", "action": "write"},
                {"object": "commands", "action": "read"}, {"object": "enrollment_tokens", "action": "read"},
                {"object": "ca", "action": "read"}, {"object": "self", "action": "read"}]}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let operator = Role::Custom("operator".into());
    out.push((
        who("custom-role api token", Some(operator.clone()), false),
        Auth::Bearer(token(state, operator).await),
    ));
    // A paired device (viewer), through the real pairing flow.
    let (_, started) = call(state, "POST", "/pair/start", None, None).await;
    let code = started["pairing_code"].as_str().unwrap();
    let approve = serde_json::json!({ "pairing_code": code, "role": "viewer", "device_name": "d" });
    let (status, _) = call(
        state,
        "POST",
        "/v1/pairings/approve",
        Some(&owner),
        Some(&approve.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let confirm = serde_json::json!({
        "pairing_code": code, "device_name": "d", "pairing_secret": started["pairing_secret"]
    });
    let (_, tokens) = call(
        state,
        "POST",
        "/pair/confirm",
        None,
        Some(&confirm.to_string()),
    )
    .await;
    out.push((
        who("device session", Some(Role::Viewer), false),
        Auth::Bearer(tokens["access_token"].as_str().unwrap().to_owned()),
    ));
    // SSO users: a scoped admin with a CLI token session, an admin in a browser.
    for (seed, scope, web) in [(7, "env=staging", false), (8, "", true)] {
        let user = Uuid::now_v7();
        sqlx::query(
            "insert into sso_users (id, provider, issuer, subject, email, role, scope, created_at, last_login_at)
             values ($1, 'corp', 'https://idp.example', $2, 'u@example.test', 'admin', $3, now(), now())",
        )
        .bind(user)
        .bind(user.to_string())
        .bind(scope)
        .execute(&state.pool)
        .await
        .unwrap();
        let actor = moltops_server::auth::Actor::SsoUser {
            id: user,
            name: "u".into(),
        };
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let (tokens, web_session) = moltops_server::pairing::sso_session(
            &state.pool,
            user,
            &actor,
            web,
            serde_json::json!({}),
            state.clock.now(),
            &mut rng,
        )
        .await
        .unwrap();
        if let Some(w) = web_session {
            out.push((
                who("sso browser session", Some(Role::Admin), false),
                Auth::Cookie {
                    session: w.cookie.to_string(),
                    csrf: w.csrf.to_string(),
                },
            ));
        } else {
            out.push((
                who("sso token session", Some(Role::Admin), true),
                Auth::Bearer(tokens.access.to_string()),
            ));
        }
    }
    out
}

/// Who may call an operation: anyone, or at least this role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Anyone,
    Viewer,
    /// Admin, or the custom `operator` role (viewer's permissions plus nodes/write).
    NodesWrite,
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
        row("get", "/ready", None, Anyone, Fleet),
        row("post", "/pair/start", None, Anyone, Fleet),
        row("post", "/pair/confirm", Some("{}"), Anyone, Fleet),
        row("post", "/v1/auth/refresh", Some("{}"), Anyone, Fleet),
        row("get", "/v1/me", None, Viewer, Fleet),
        row("get", "/v1/auth/role-mappings", None, Admin, Fleet),
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
        row("get", "/v1/fleet/summary", None, Viewer, Fleet),
        row("get", "/v1/nodes/{node_id}", None, Viewer, Node),
        row(
            "patch",
            "/v1/nodes/{node_id}",
            Some(r#"{"labels": {"env": "staging"}}"#),
            NodesWrite,
            Node,
        ),
        row(
            "post",
            "/v1/nodes/{node_id}/revoke",
            Some(r#"{"reason": "matrix"}"#),
            Admin,
            Node,
        ),
        row("get", "/v1/nodes/{node_id}/system/info", None, Viewer, Node),
        row(
            "get",
            "/v1/nodes/{node_id}/metrics/current",
            None,
            Viewer,
            Node,
        ),
        row(
            "get",
            "/v1/nodes/{node_id}/moltbot/status",
            None,
            Viewer,
            Node,
        ),
        row(
            "post",
            "/v1/nodes/{node_id}/install/local",
            Some(r#"{"method": "npm", "reason": "matrix"}"#),
            Admin,
            Node,
        ),
        row(
            "post",
            "/v1/nodes/{node_id}/ops/action",
            Some(r#"{"action": "restart", "reason": "matrix"}"#),
            Admin,
            Node,
        ),
        row("get", "/v1/jobs", None, Viewer, Fleet),
        row("get", "/v1/jobs/{job_id}", None, Viewer, Node),
        row("get", "/v1/jobs/{job_id}/events", None, Viewer, Node),
        row(
            "post",
            "/v1/jobs/{job_id}/cancel",
            Some(r#"{"reason": "matrix"}"#),
            Admin,
            Node,
        ),
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
        row("get", "/v1/audit", None, Admin, Unscoped),
        row("get", "/v1/audit/export", None, Admin, Unscoped),
        row("get", "/v1/audit/verify", None, Admin, Unscoped),
        row(
            "post",
            "/v1/audit/verify",
            Some(r#"{"checkpoints": []}"#),
            Admin,
            Unscoped,
        ),
        row("get", "/v1/audit/checkpoints", None, Admin, Unscoped),
        row("post", "/v1/audit/checkpoints", None, Admin, Unscoped),
        row("get", "/v1/roles", None, Admin, Fleet),
        row(
            "put",
            "/v1/roles/{role}",
            Some(r#"{"permissions": [{"object": "nodes", "action": "read"}]}"#),
            Owner,
            Fleet,
        ),
        row("delete", "/v1/roles/{role}", None, Owner, Fleet),
        row("get", "/v1/auth/providers", None, Anyone, Fleet),
        row("get", "/v1/auth/oidc/{provider}/login", None, Anyone, Fleet),
        row(
            "get",
            "/v1/auth/oidc/{provider}/callback",
            None,
            Anyone,
            Fleet,
        ),
        row("post", "/v1/auth/oidc/{provider}/cli", None, Anyone, Fleet),
        row("post", "/v1/auth/cli/approve", None, Anyone, Fleet),
        row("post", "/v1/auth/cli/poll", Some("{}"), Anyone, Fleet),
    ]
}

/// A principal: how it authenticates, its role (None = anonymous) and whether it is scoped to
/// `env=staging`.
#[derive(Debug, Clone)]
struct Who {
    how: &'static str,
    role: Option<Role>,
    scoped: bool,
}

/// How a principal's requests carry their credential.
#[derive(Debug, Clone)]
enum Auth {
    None,
    Bearer(String),
    /// A browser: session cookie plus the CSRF header.
    Cookie {
        session: String,
        csrf: String,
    },
}

fn expected(row: &Row, who: &Who, own_node: bool) -> bool {
    // The custom `operator` role: viewer's permissions plus nodes/write.
    let rank = |r: &Role| match r {
        Role::Viewer | Role::Custom(_) => 1,
        Role::Admin => 2,
        Role::Owner => 3,
    };
    let role_ok = match (row.needs, &who.role) {
        (Needs::Anyone, _) => true,
        (_, None) => false,
        (Needs::Viewer, Some(r)) => rank(r) >= 1,
        (Needs::NodesWrite, Some(r)) => rank(r) >= 2 || matches!(r, Role::Custom(_)),
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
        "insert into nodes (id, hostname, labels, enrolled_at, certificate_serial, certificate_not_after,
                            metrics, metrics_at)
         values ($1, 'h', jsonb_build_object('env', $2::text), now(), 's', now() + interval '1 day',
                 '{\"cpu_percent\": 1.5}'::jsonb, now())",
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
    let principals = principals(&state).await;
    let mut mismatches = Vec::new();
    let mut checked = 0;
    // Logout ends the sessions it is called with: it goes last.
    let mut rows = matrix();
    rows.sort_by_key(|r| r.route == "/v1/auth/logout");
    for row in rows {
        for (who, auth) in &principals {
            let objects: &[bool] = if row.target == Target::Node {
                &[true, false]
            } else {
                &[true]
            };
            for &own in objects {
                let (node_id, command_id) = node(&pool, if own { "staging" } else { "prod" }).await;
                // A finished job's event stream ends (a live one streams until it ends).
                if row.route.ends_with("/events") {
                    sqlx::query("update commands set status = 'succeeded' where id = $1")
                        .bind(command_id)
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                let path = row
                    .route
                    .replace("{node_id}", &node_id.to_string())
                    .replace("{command_id}", &command_id.to_string())
                    .replace("{job_id}", &command_id.to_string())
                    .replace("{token_id}", OTHER)
                    .replace("{user_id}", OTHER)
                    .replace("{role}", "matrix-role")
                    .replace("{provider}", "corp");
                // Destructive operations say why.
                let path = if row.method == "delete" && row.route == "/v1/users/{user_id}" {
                    format!("{path}?reason=matrix")
                } else {
                    path
                };
                let cookie;
                let (headers, bearer): (Vec<(&str, &str)>, Option<&str>) = match auth {
                    Auth::None => (vec![], None),
                    Auth::Bearer(token) => (vec![], Some(token.as_str())),
                    Auth::Cookie { session, csrf } => {
                        cookie = format!("moltops_session={session}");
                        (
                            vec![("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())],
                            None,
                        )
                    }
                };
                let ((status, response), _) = call_from(
                    &state,
                    "192.0.2.1:40000",
                    &headers,
                    &row.method.to_uppercase(),
                    &path,
                    bearer,
                    row.body,
                )
                .await;
                // On an existing node, allowed means success; elsewhere, anything but a refusal
                // of the caller (the objects there may legitimately not exist).
                let allowed = match row.target {
                    // 428: authorized, and now asked to confirm (a destructive operation).
                    Target::Node => {
                        status.is_success() || status == StatusCode::PRECONDITION_REQUIRED
                    }
                    Target::Fleet | Target::Unscoped => {
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN
                    }
                };
                checked += 1;
                if allowed != expected(&row, who, own) || status.is_server_error() {
                    mismatches.push(format!(
                        "{} {} as {} {:?} (scoped: {}) on {} node: {status} {response}",
                        row.method,
                        row.route,
                        who.how,
                        who.role,
                        who.scoped,
                        if own { "own" } else { "foreign" }
                    ));
                }
            }
        }
    }
    assert!(checked >= 400, "{checked}");
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
