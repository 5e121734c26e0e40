//! Every mutating route writes its audit row: a walk over the router's table, each call tagged
//! with its own `X-Request-Id`, which the audit row must carry. A new mutating route fails this
//! test until it is walked (or listed as exempt, with the reason and the test that covers it).

use std::collections::BTreeSet;

use axum::http::StatusCode;
use moltops_server::auth::Role;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{call_from, state, token};

/// Mutating routes not walked here, and why.
const EXEMPT: &[(&str, &str, &str)] = &[
    (
        "post",
        "/v1/audit/verify",
        "a read that takes its input as a body; changes nothing",
    ),
    (
        "post",
        "/v1/auth/cli/poll",
        "a pending poll changes nothing; the approved poll's session.login row is checked in e2e sso::the_cli_signs_in…",
    ),
    (
        "post",
        "/v1/auth/oidc/{provider}/cli",
        "needs an OpenID provider: e2e sso::the_cli_signs_in… checks its sso.cli_start row",
    ),
    (
        "post",
        "/v1/auth/cli/approve",
        "needs an OpenID provider: e2e sso::the_cli_signs_in… checks its sso.cli_approve row",
    ),
];

struct Walker {
    state: moltops_server::serve::AppState,
    walked: BTreeSet<(String, String)>,
    /// Every secret the walk was handed (tokens, pairing secrets, confirmation tokens): canaries
    /// that must never reach an audit row.
    secrets: Vec<String>,
}

fn collect_secrets(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if (key.contains("token") || key.contains("secret"))
                    && let Some(s) = v.as_str()
                    && s.len() >= 16
                {
                    out.push(s.to_owned());
                }
                collect_secrets(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_secrets(v, out)),
        _ => {}
    }
}

impl Walker {
    /// One call tagged with a fresh request id (sent as a trusted proxy would: ids from anyone else
    /// are replaced); expects success (a destructive call is repeated
    /// with its confirmation token) and an audit row carrying that request id.
    async fn step(
        &mut self,
        method: &str,
        route: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let rid = format!("walk-{}", Uuid::new_v4().simple());
        let body = body.map(|b| b.to_string());
        let ((mut status, mut answer), _) = call_from(
            &self.state,
            "10.9.9.9:40000",
            &[("x-request-id", &rid)],
            method,
            path,
            bearer,
            body.as_deref(),
        )
        .await;
        if status == StatusCode::PRECONDITION_REQUIRED {
            let confirmation = answer["confirmation_token"].as_str().unwrap().to_owned();
            self.secrets.push(confirmation.clone());
            ((status, answer), _) = call_from(
                &self.state,
                "10.9.9.9:40000",
                &[
                    ("x-request-id", &rid),
                    ("x-confirmation-token", &confirmation),
                ],
                method,
                path,
                bearer,
                body.as_deref(),
            )
            .await;
        }
        assert!(status.is_success(), "{method} {path}: {status} {answer}");
        collect_secrets(&answer, &mut self.secrets);
        let rows: i64 =
            sqlx::query_scalar("select count(*) from audit_events where request_id = $1")
                .bind(&rid)
                .fetch_one(&self.state.pool)
                .await
                .unwrap();
        assert!(
            rows >= 1,
            "{method} {route} changed state without an audit row"
        );
        self.walked
            .insert((method.to_lowercase(), route.to_owned()));
        answer
    }
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn every_mutating_route_writes_its_audit_row(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let owner = token(&state, Role::Owner).await;
    let node_id = Uuid::now_v7();
    sqlx::query(
        "insert into nodes (id, hostname, labels, enrolled_at, certificate_serial, certificate_not_after)
         values ($1, 'h', '{}'::jsonb, now(), 's', now() + interval '1 day')",
    )
    .bind(node_id)
    .execute(&pool)
    .await
    .unwrap();
    let mut w = Walker {
        state,
        walked: BTreeSet::new(),
        secrets: vec![owner.clone()],
    };
    let o = Some(owner.as_str());

    // Pairing, sessions, users.
    let started = w
        .step(
            "POST",
            "/pair/start",
            "/pair/start",
            None,
            Some(json!({ "device_name": "walk" })),
        )
        .await;
    let code = started["pairing_code"].as_str().unwrap().to_owned();
    w.step(
        "POST",
        "/v1/pairings/approve",
        "/v1/pairings/approve",
        o,
        Some(json!({ "pairing_code": code, "role": "viewer", "device_name": "walk" })),
    )
    .await;
    let tokens = w.step("POST", "/pair/confirm", "/pair/confirm", None,
        Some(json!({ "pairing_code": code, "device_name": "walk", "pairing_secret": started["pairing_secret"] }))).await;
    let tokens = w
        .step(
            "POST",
            "/v1/auth/refresh",
            "/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": tokens["refresh_token"] })),
        )
        .await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let (_, me) = crate::call(&w.state, "GET", "/v1/me", Some(&access), None).await;
    let device = me["id"].as_str().unwrap().to_owned();
    w.step(
        "POST",
        "/v1/auth/logout",
        "/v1/auth/logout",
        Some(&access),
        None,
    )
    .await;
    w.step(
        "PATCH",
        "/v1/users/{user_id}",
        &format!("/v1/users/{device}"),
        o,
        Some(json!({ "role": "admin" })),
    )
    .await;
    w.step(
        "DELETE",
        "/v1/users/{user_id}",
        &format!("/v1/users/{device}?reason=walk"),
        o,
        None,
    )
    .await;

    // API tokens, roles, enrollment tokens.
    let created = w
        .step(
            "POST",
            "/v1/api-tokens",
            "/v1/api-tokens",
            o,
            Some(json!({ "name": "walk", "role": "viewer" })),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    w.step(
        "DELETE",
        "/v1/api-tokens/{token_id}",
        &format!("/v1/api-tokens/{id}"),
        o,
        None,
    )
    .await;
    w.step(
        "PUT",
        "/v1/roles/{role}",
        "/v1/roles/walker",
        o,
        Some(json!({ "permissions": [] })),
    )
    .await;
    w.step("DELETE", "/v1/roles/{role}", "/v1/roles/walker", o, None)
        .await;
    let created = w
        .step(
            "POST",
            "/v1/enrollment-tokens",
            "/v1/enrollment-tokens",
            o,
            Some(json!({})),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    w.step(
        "DELETE",
        "/v1/enrollment-tokens/{token_id}",
        &format!("/v1/enrollment-tokens/{id}"),
        o,
        None,
    )
    .await;

    // Nodes.
    w.step(
        "PATCH",
        "/v1/nodes/{node_id}",
        &format!("/v1/nodes/{node_id}"),
        o,
        Some(json!({ "labels": { "env": "x" } })),
    )
    .await;
    let ping = w
        .step(
            "POST",
            "/v1/nodes/{node_id}/ping",
            &format!("/v1/nodes/{node_id}/ping"),
            o,
            None,
        )
        .await;
    let job = ping["id"].as_str().unwrap().to_owned();
    w.step(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        &format!("/v1/jobs/{job}/cancel"),
        o,
        Some(json!({ "reason": "walk" })),
    )
    .await;
    w.step(
        "POST",
        "/v1/nodes/{node_id}/install/local",
        &format!("/v1/nodes/{node_id}/install/local"),
        o,
        Some(json!({ "method": "npm", "version": "2026.9.1", "reason": "walk" })),
    )
    .await;
    w.step(
        "POST",
        "/v1/nodes/{node_id}/ops/action",
        &format!("/v1/nodes/{node_id}/ops/action"),
        o,
        Some(json!({ "action": "restart", "reason": "walk" })),
    )
    .await;
    w.step(
        "POST",
        "/v1/nodes/{node_id}/revoke",
        &format!("/v1/nodes/{node_id}/revoke"),
        o,
        Some(json!({ "reason": "walk" })),
    )
    .await;

    // The audit log itself.
    w.step(
        "POST",
        "/v1/audit/checkpoints",
        "/v1/audit/checkpoints",
        o,
        None,
    )
    .await;

    let mutating: BTreeSet<(String, String)> = moltops_server::http::operations()
        .into_iter()
        .filter(|op| op.method != "get")
        .map(|op| (op.method, op.path.to_owned()))
        .collect();
    let exempt: BTreeSet<(String, String)> = EXEMPT
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let covered: BTreeSet<_> = w.walked.union(&exempt).cloned().collect();
    assert_eq!(
        mutating, covered,
        "every mutating route is walked or exempt with a reason"
    );
    // No secret handed out on the way is in any audit row.
    let everything: String =
        sqlx::query_scalar("select coalesce(string_agg(a::text, ' '), '') from audit_events a")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(w.secrets.len() >= 6, "{:?}", w.secrets.len());
    for secret in &w.secrets {
        assert!(
            !everything.contains(secret.as_str()),
            "a secret reached the audit log"
        );
    }
    // And after all that, the chain is intact.
    let keys = moltops_server::audit_keys::PublicKeys::of(&w.state.signer);
    let stored = moltops_server::audit_keys::stored(&pool).await.unwrap();
    let verification = moltops_server::audit::verify(&pool, &stored, &keys)
        .await
        .unwrap();
    assert!(verification.ok, "{verification:?}");
}
