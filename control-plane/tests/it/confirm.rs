//! Destructive operations need a confirmation token bound to (user, action, target,
//! parameters), single-use, five minutes. The operations come from the spec
//! (`x-moltops-destructive: true`): one the table below does not know fails the test.

use axum::http::StatusCode;
use moltops_server::auth::Role;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{call_from, state, token};

fn destructive_in_spec() -> Vec<(String, String)> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api/openapi.yaml");
    let spec: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for (route, item) in spec["paths"].as_mapping().unwrap() {
        for (method, op) in item.as_mapping().unwrap() {
            if op
                .get("x-moltops-destructive")
                .and_then(serde_yaml::Value::as_bool)
                == Some(true)
            {
                out.push((
                    method.as_str().unwrap().to_owned(),
                    route.as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// One destructive operation: how to call it on a target with given parameters, and whether
/// the target was changed.
struct Case {
    method: &'static str,
    route: &'static str,
}

impl Case {
    fn request(&self, target: &str, reason: &str) -> (String, Option<String>) {
        match self.route {
            "/v1/nodes/{node_id}/revoke" => (
                format!("/v1/nodes/{target}/revoke"),
                Some(serde_json::json!({ "reason": reason }).to_string()),
            ),
            "/v1/users/{user_id}" => (format!("/v1/users/{target}?reason={reason}"), None),
            "/v1/nodes/{node_id}/install/local" => (
                format!("/v1/nodes/{target}/install/local"),
                Some(
                    serde_json::json!({ "method": "npm", "version": "2026.9.1", "reason": reason })
                        .to_string(),
                ),
            ),
            "/v1/nodes/{node_id}/ops/action" => (
                format!("/v1/nodes/{target}/ops/action"),
                Some(serde_json::json!({ "action": "stop", "reason": reason }).to_string()),
            ),
            other => panic!("no scenario for {other}"),
        }
    }

    async fn target(&self, state: &moltops_server::serve::AppState, owner: &str) -> String {
        match self.route {
            "/v1/nodes/{node_id}/revoke"
            | "/v1/nodes/{node_id}/install/local"
            | "/v1/nodes/{node_id}/ops/action" => {
                let id = Uuid::now_v7();
                sqlx::query(
                    "insert into nodes (id, hostname, labels, enrolled_at, certificate_serial, certificate_not_after)
                     values ($1, 'h', '{}'::jsonb, now(), 's', now() + interval '1 day')",
                )
                .bind(id)
                .execute(&state.pool)
                .await
                .unwrap();
                id.to_string()
            }
            "/v1/users/{user_id}" => {
                crate::pairing::paired_device(state, owner, "viewer")
                    .await
                    .0
            }
            other => panic!("no scenario for {other}"),
        }
    }

    async fn changed(&self, state: &moltops_server::serve::AppState, target: &str) -> bool {
        let id = Uuid::parse_str(target).unwrap();
        let sql = match self.route {
            "/v1/nodes/{node_id}/revoke" => {
                "select revoked_at is not null from nodes where id = $1"
            }
            "/v1/users/{user_id}" => "select revoked_at is not null from devices where id = $1",
            "/v1/nodes/{node_id}/install/local" => {
                "select exists (select 1 from commands where node_id = $1 and kind = 'install')"
            }
            "/v1/nodes/{node_id}/ops/action" => {
                "select exists (select 1 from commands where node_id = $1 and kind = 'service_action')"
            }
            other => panic!("no scenario for {other}"),
        };
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&state.pool)
            .await
            .unwrap()
    }
}

const CASES: &[Case] = &[
    Case {
        method: "post",
        route: "/v1/nodes/{node_id}/revoke",
    },
    Case {
        method: "delete",
        route: "/v1/users/{user_id}",
    },
    Case {
        method: "post",
        route: "/v1/nodes/{node_id}/install/local",
    },
    Case {
        method: "post",
        route: "/v1/nodes/{node_id}/ops/action",
    },
];

async fn send(
    state: &moltops_server::serve::AppState,
    case: &Case,
    bearer: &str,
    (path, body): &(String, Option<String>),
    confirmation: Option<&str>,
) -> (StatusCode, Value) {
    let headers: Vec<(&str, &str)> = confirmation
        .map(|c| ("x-confirmation-token", c))
        .into_iter()
        .collect();
    call_from(
        state,
        "192.0.2.1:40000",
        &headers,
        &case.method.to_uppercase(),
        path,
        Some(bearer),
        body.as_deref(),
    )
    .await
    .0
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn every_destructive_operation_refuses_without_a_valid_confirmation(pool: PgPool) {
    let (state, clock) = state(pool.clone()).await;
    let known: Vec<(String, String)> = CASES
        .iter()
        .map(|c| (c.method.to_owned(), c.route.to_owned()))
        .collect();
    let mut sorted = known.clone();
    sorted.sort();
    assert_eq!(
        destructive_in_spec(),
        sorted,
        "every destructive operation in the spec has a case here"
    );

    let alice = token(&state, Role::Owner).await;
    let bob = token(&state, Role::Owner).await;
    for case in CASES {
        let target = case.target(&state, &alice).await;
        let other_target = case.target(&state, &alice).await;
        let request = case.request(&target, "retired");

        // No token: 428 with one, and nothing happens.
        let (status, answer) = send(&state, case, &alice, &request, None).await;
        assert_eq!(status, StatusCode::PRECONDITION_REQUIRED, "{answer}");
        assert_eq!(answer["code"], "confirmation_required");
        assert_eq!(answer["target"], target.as_str());
        let issued = answer["confirmation_token"].as_str().unwrap().to_owned();
        assert!(!case.changed(&state, &target).await);

        let refused = |what: &'static str| {
            move |(status, answer): (StatusCode, Value)| {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{} {what}: {answer}",
                    case.route
                );
                assert_eq!(answer["code"], "confirmation_invalid", "{what}");
            }
        };
        // Another user's token, other parameters, another target, a forged token.
        refused("another user's token")(send(&state, case, &bob, &request, Some(&issued)).await);
        refused("other parameters")(
            send(
                &state,
                case,
                &alice,
                &case.request(&target, "other"),
                Some(&issued),
            )
            .await,
        );
        refused("another target")(
            send(
                &state,
                case,
                &alice,
                &case.request(&other_target, "retired"),
                Some(&issued),
            )
            .await,
        );
        refused("a forged token")(send(&state, case, &alice, &request, Some("mcf_forged")).await);
        assert!(!case.changed(&state, &target).await && !case.changed(&state, &other_target).await);

        // Expired after five minutes.
        clock.advance(chrono::Duration::minutes(5) + chrono::Duration::seconds(1));
        refused("an expired token")(send(&state, case, &alice, &request, Some(&issued)).await);
        assert!(!case.changed(&state, &target).await);

        // A fresh token works once, and the audit row says who, what, why.
        let (_, answer) = send(&state, case, &alice, &request, None).await;
        let fresh = answer["confirmation_token"].as_str().unwrap().to_owned();
        let (status, answer) = send(&state, case, &alice, &request, Some(&fresh)).await;
        assert!(status.is_success(), "{answer}");
        assert!(case.changed(&state, &target).await);
        refused("a used token")(send(&state, case, &alice, &request, Some(&fresh)).await);
        let reason: Option<String> = sqlx::query_scalar(
            "select reason from audit_events where target_id = $1 and outcome = 'success' order by seq desc limit 1",
        )
        .bind(&target)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(reason.as_deref(), Some("retired"), "{}", case.route);
    }
    // Tokens are never stored in clear.
    let leaked: i64 =
        sqlx::query_scalar("select count(*) from audit_events where detail::text like '%mcf_%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(leaked, 0);
}
