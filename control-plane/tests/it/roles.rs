//! Custom roles: owners define them within Admin's powers, grant them, and cannot delete one in
//! use; every principal holding one gets exactly its permissions, on the next request.

use axum::http::StatusCode;
use moltops_server::auth::Role;
use sqlx::PgPool;

use crate::{call, state, token};

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn owners_define_custom_roles_within_admins_powers_and_grant_them(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let owner = token(&state, Role::Owner).await;
    let admin = token(&state, Role::Admin).await;

    // Admins read roles but do not define them; built-in roles are fixed.
    let (status, list) = call(&state, "GET", "/v1/roles", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["admin", "owner", "viewer"]);
    assert!(
        list["assignable"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["object"] != "users" || p["action"] != "manage")
    );
    let body = r#"{"permissions": [{"object": "nodes", "action": "read"}]}"#;
    assert_eq!(
        call(&state, "PUT", "/v1/roles/labeler", Some(&admin), Some(body))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&state, "PUT", "/v1/roles/viewer", Some(&owner), Some(body))
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        call(&state, "DELETE", "/v1/roles/admin", Some(&owner), None)
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        call(
            &state,
            "PUT",
            "/v1/roles/Bad%20Name",
            Some(&owner),
            Some(body)
        )
        .await
        .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // Owner-only powers cannot be put in a custom role.
    for escalation in [
        r#"{"permissions": [{"object": "users", "action": "manage"}]}"#,
        r#"{"permissions": [{"object": "roles", "action": "manage"}]}"#,
        r#"{"permissions": [{"object": "api_tokens", "action": "manage"}]}"#,
        r#"{"permissions": [{"object": "*", "action": "*"}]}"#,
        r#"{"permissions": [{"object": "nodes", "action": "*"}]}"#,
    ] {
        let (status, body) = call(
            &state,
            "PUT",
            "/v1/roles/sneaky",
            Some(&owner),
            Some(escalation),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{escalation}: {body}"
        );
    }

    // A role that reads nodes and labels them.
    let labeler = r#"{"description": "labels nodes", "permissions": [
        {"object": "nodes", "action": "read"}, {"object": "nodes", "action": "write"}]}"#;
    let (status, created) = call(
        &state,
        "PUT",
        "/v1/roles/labeler",
        Some(&owner),
        Some(labeler),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["permissions"].as_array().unwrap().len(), 2);
    let (status, _) = call(
        &state,
        "PUT",
        "/v1/roles/labeler",
        Some(&owner),
        Some(labeler),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "replacing is idempotent");

    // Only owners grant it; an unknown role cannot be granted.
    let grant = r#"{"name": "labels-bot", "role": "labeler"}"#;
    assert_eq!(
        call(&state, "POST", "/v1/api-tokens", Some(&admin), Some(grant))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = call(
        &state,
        "POST",
        "/v1/api-tokens",
        Some(&owner),
        Some(r#"{"name": "x", "role": "ghost"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, issued) = call(&state, "POST", "/v1/api-tokens", Some(&owner), Some(grant)).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let bot = issued["token"].as_str().unwrap().to_owned();
    let (_, me) = call(&state, "GET", "/v1/nodes", Some(&bot), None).await;
    assert!(me["items"].is_array(), "{me}");
    assert_eq!(
        call(&state, "GET", "/v1/me", Some(&bot), None).await.0,
        StatusCode::FORBIDDEN,
        "not given self/read"
    );
    assert_eq!(
        call(&state, "GET", "/v1/enrollment-tokens", Some(&bot), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    // Narrowing the role applies on the next request.
    let narrower = r#"{"permissions": [{"object": "self", "action": "read"}]}"#;
    assert_eq!(
        call(
            &state,
            "PUT",
            "/v1/roles/labeler",
            Some(&owner),
            Some(narrower)
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&state, "GET", "/v1/nodes", Some(&bot), None).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, me) = call(&state, "GET", "/v1/me", Some(&bot), None).await;
    assert_eq!(
        (status, me["role"].as_str()),
        (StatusCode::OK, Some("labeler"))
    );

    // In use: not deleted. Once its holder is revoked: deleted, and audited throughout.
    let (status, body) = call(&state, "DELETE", "/v1/roles/labeler", Some(&owner), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let token_id = issued["id"].as_str().unwrap();
    assert_eq!(
        call(
            &state,
            "DELETE",
            &format!("/v1/api-tokens/{token_id}"),
            Some(&owner),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&state, "DELETE", "/v1/roles/labeler", Some(&owner), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&state, "DELETE", "/v1/roles/labeler", Some(&owner), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let audited: Vec<String> = sqlx::query_scalar(
        "select action from audit_events where target_kind = 'role' order by occurred_at, id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        audited,
        vec!["role.create", "role.update", "role.update", "role.delete"]
    );
    let rules: i64 = sqlx::query_scalar("select count(*) from rbac_rules where v0 = 'labeler'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rules, 0);
}
