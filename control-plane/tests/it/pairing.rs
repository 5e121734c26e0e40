//! Device pairing, device sessions, rate limits, the first-boot setup code, and API tokens.

use axum::http::StatusCode;
use chrono::Duration;
use moltops_server::auth::Role;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{call, call_confirmed, call_from, state, token};

async fn start(state: &moltops_server::serve::AppState) -> (String, String) {
    let (status, started) = call(
        state,
        "POST",
        "/pair/start",
        None,
        Some(r#"{"device_name": "laptop"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["expires_in_seconds"], 600);
    (
        started["pairing_code"].as_str().unwrap().to_owned(),
        started["pairing_secret"].as_str().unwrap().to_owned(),
    )
}

fn confirm_body(code: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) => json!({ "pairing_code": code, "device_name": "laptop", "pairing_secret": s })
            .to_string(),
        None => json!({ "pairing_code": code, "device_name": "laptop" }).to_string(),
    }
}

async fn audit_count(pool: &PgPool, action: &str) -> i64 {
    sqlx::query_scalar("select count(*) from audit_events where action = $1")
        .bind(action)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn a_device_pairs_only_after_approval_and_with_its_secret(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let admin = token(&state, Role::Admin).await;
    let viewer_token = token(&state, Role::Viewer).await;
    let (code, secret) = start(&state).await;

    let (status, body) = call(
        &state,
        "POST",
        "/pair/confirm",
        None,
        Some(&confirm_body(&code, Some(&secret))),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "pairing_pending");

    let approve = json!({ "pairing_code": code.to_lowercase(), "role": "viewer", "device_name": "ops laptop" }).to_string();
    let (status, _) = call(
        &state,
        "POST",
        "/v1/pairings/approve",
        Some(&viewer_token),
        Some(&approve),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "viewers cannot approve");
    let (status, pending) = call(&state, "GET", "/v1/pairings", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pending["items"][0]["requested_name"], "laptop");
    assert!(
        !pending.to_string().contains(&code) && !pending.to_string().contains(&secret),
        "codes are never listed"
    );
    let (status, approved) = call(
        &state,
        "POST",
        "/v1/pairings/approve",
        Some(&admin),
        Some(&approve),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{approved}");

    // Someone who saw the code on the screen, but lacks the secret, gets nothing.
    for wrong in [None, Some("mop_wrong")] {
        let (status, _) = call(
            &state,
            "POST",
            "/pair/confirm",
            None,
            Some(&confirm_body(&code, wrong)),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let ((status, tokens), headers) = call_from(
        &state,
        "192.0.2.1:1",
        &[],
        "POST",
        "/pair/confirm",
        None,
        Some(&confirm_body(&code, Some(&secret))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(tokens["expires_in_seconds"], 900);
    let access = tokens["access_token"].as_str().unwrap();

    let (_, me) = call(&state, "GET", "/v1/me", Some(access), None).await;
    assert_eq!(
        me,
        json!({
            "kind": "device", "id": me["id"], "name": "ops laptop", "role": "viewer", "scope": "",
            "permissions": ["nodes:read", "commands:read", "enrollment_tokens:read", "ca:read", "self:read"]
        })
    );
    assert_eq!(
        call(&state, "GET", "/v1/nodes", Some(access), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/enrollment-tokens",
            Some(access),
            Some("{}")
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );

    // Single use.
    let (status, _) = call(
        &state,
        "POST",
        "/pair/confirm",
        None,
        Some(&confirm_body(&code, Some(&secret))),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(audit_count(&pool, "pairing.approve").await, 1);
    let confirmed: i64 = sqlx::query_scalar(
        "select count(*) from audit_events where action = 'pairing.confirm' and outcome = 'success'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(confirmed, 1);
    assert!(sqlx::query_scalar::<_, i64>("select count(*) from audit_events where action = 'pairing.confirm' and outcome = 'denied'")
        .fetch_one(&pool)
        .await
        .unwrap() >= 3, "refused confirmations are audited");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn refresh_rotates_and_a_replayed_refresh_token_revokes_the_session(pool: PgPool) {
    let (state, clock) = state(pool.clone()).await;
    let owner = token(&state, Role::Owner).await;
    let (code, secret) = start(&state).await;
    let approve =
        json!({ "pairing_code": code, "role": "admin", "device_name": "cli" }).to_string();
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/pairings/approve",
            Some(&owner),
            Some(&approve)
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, first) = call(
        &state,
        "POST",
        "/pair/confirm",
        None,
        Some(&confirm_body(&code, Some(&secret))),
    )
    .await;

    // The access token expires after 15 minutes; the refresh token still works.
    clock.advance(Duration::minutes(16));
    let old_access = first["access_token"].as_str().unwrap();
    assert_eq!(
        call(&state, "GET", "/v1/me", Some(old_access), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let refresh = |t: &Value| json!({ "refresh_token": t["refresh_token"] }).to_string();
    let (status, second) = call(
        &state,
        "POST",
        "/v1/auth/refresh",
        None,
        Some(&refresh(&first)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let access = second["access_token"].as_str().unwrap();
    assert_eq!(
        call(&state, "GET", "/v1/me", Some(access), None).await.0,
        StatusCode::OK
    );

    // Replaying the replaced refresh token: refused, and the session dies with it.
    let (status, _) = call(
        &state,
        "POST",
        "/v1/auth/refresh",
        None,
        Some(&refresh(&first)),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(&state, "GET", "/v1/me", Some(access), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/auth/refresh",
            None,
            Some(&refresh(&second))
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(audit_count(&pool, "session.refresh_reuse").await, 1);
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn logout_is_immediate_and_only_owners_approve_owners_and_codes_expire(pool: PgPool) {
    let (state, clock) = state(pool.clone()).await;
    let owner = token(&state, Role::Owner).await;
    let admin = token(&state, Role::Admin).await;
    let (code, secret) = start(&state).await;
    let as_owner =
        json!({ "pairing_code": code, "role": "owner", "device_name": "phone" }).to_string();
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/pairings/approve",
            Some(&admin),
            Some(&as_owner)
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
            Some(&owner),
            Some(&as_owner)
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, tokens) = call(
        &state,
        "POST",
        "/pair/confirm",
        None,
        Some(&confirm_body(&code, Some(&secret))),
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        call(&state, "GET", "/v1/me", Some(access), None).await.1["role"],
        "owner"
    );
    assert_eq!(
        call(&state, "POST", "/v1/auth/logout", Some(access), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&state, "GET", "/v1/me", Some(access), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&state, "POST", "/v1/auth/logout", Some(&owner), None)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );

    // An approved but unconfirmed code dies after 10 minutes.
    let (late, late_secret) = start(&state).await;
    let approve =
        json!({ "pairing_code": late, "role": "viewer", "device_name": "late" }).to_string();
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/pairings/approve",
            Some(&owner),
            Some(&approve)
        )
        .await
        .0,
        StatusCode::OK
    );
    clock.advance(Duration::minutes(11));
    let (status, _) = call(
        &state,
        "POST",
        "/pair/confirm",
        None,
        Some(&confirm_body(&late, Some(&late_secret))),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/pairings/approve",
            Some(&owner),
            Some(&approve)
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn pairing_is_rate_limited_per_client_and_forwarded_for_counts_only_from_trusted_proxies(
    pool: PgPool,
) {
    let (state, clock) = state(pool).await;
    let post = |peer: &'static str, xff: Option<&'static str>| {
        let state = state.clone();
        async move {
            let headers: Vec<(&str, &str)> = xff
                .map(|x| vec![("x-forwarded-for", x)])
                .unwrap_or_default();
            call_from(&state, peer, &headers, "POST", "/pair/start", None, None).await
        }
    };
    for _ in 0..10 {
        assert_eq!((post("192.0.2.7:1", None).await.0).0, StatusCode::OK);
    }
    let ((status, body), headers) = post("192.0.2.7:1", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(headers["retry-after"], "6", "one attempt every 6 s");
    // A spoofed header from an untrusted peer changes nothing.
    assert_eq!(
        (post("192.0.2.7:1", Some("198.51.100.1")).await.0).0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client is unaffected; behind the trusted proxy, the forwarded client is the key.
    assert_eq!((post("192.0.2.8:1", None).await.0).0, StatusCode::OK);
    for _ in 0..10 {
        assert_eq!(
            (post("10.9.9.9:1", Some("198.51.100.9")).await.0).0,
            StatusCode::OK
        );
    }
    assert_eq!(
        (post("10.9.9.9:1", Some("198.51.100.9")).await.0).0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        (post("10.9.9.9:1", Some("198.51.100.10")).await.0).0,
        StatusCode::OK
    );
    clock.advance(Duration::seconds(7));
    assert_eq!((post("192.0.2.7:1", None).await.0).0, StatusCode::OK);
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn the_setup_code_makes_the_first_owner_once(pool: PgPool) {
    use rand::SeedableRng;
    let (state, _) = state(pool.clone()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let code = moltops_server::pairing::setup_code_if_ownerless(&pool, crate::t0(), &mut rng)
        .await
        .unwrap()
        .unwrap();
    let (status, tokens) = call(
        &state,
        "POST",
        "/pair/confirm",
        None,
        Some(&confirm_body(&code, None)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        call(&state, "GET", "/v1/me", Some(access), None).await.1["role"],
        "owner"
    );
    assert_eq!(
        call(
            &state,
            "POST",
            "/pair/confirm",
            None,
            Some(&confirm_body(&code, None))
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    let again = moltops_server::pairing::setup_code_if_ownerless(&pool, crate::t0(), &mut rng)
        .await
        .unwrap();
    assert!(again.is_none(), "an owner exists now");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn owners_manage_api_tokens_and_revocation_is_immediate(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let owner = token(&state, Role::Owner).await;
    let admin = token(&state, Role::Admin).await;
    let body = r#"{"name": "ci", "role": "viewer", "expires_in_days": 30}"#;
    assert_eq!(
        call(&state, "POST", "/v1/api-tokens", Some(&admin), Some(body))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, created) = call(&state, "POST", "/v1/api-tokens", Some(&owner), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().unwrap();
    assert!(secret.starts_with("mot_"));
    let (_, list) = call(&state, "GET", "/v1/api-tokens", Some(&owner), None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    assert!(!list.to_string().contains(secret));
    assert_eq!(
        call(&state, "GET", "/v1/me", Some(secret), None).await.1["role"],
        "viewer"
    );
    let path = format!("/v1/api-tokens/{}", created["id"].as_str().unwrap());
    assert_eq!(
        call(&state, "DELETE", &path, Some(&owner), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&state, "GET", "/v1/me", Some(secret), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(audit_count(&pool, "api_token.revoke").await, 1);
    let (status, _) = call(
        &state,
        "POST",
        "/v1/api-tokens",
        Some(&owner),
        Some(r#"{"name": "", "role": "viewer"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// Pairs a device with `role`, approved by `owner`; returns (device id, access token, refresh token).
pub async fn paired_device(
    state: &moltops_server::serve::AppState,
    owner: &str,
    role: &str,
) -> (String, String, String) {
    let (code, secret) = start(state).await;
    let approve = json!({ "pairing_code": code, "role": role, "device_name": "d" }).to_string();
    assert_eq!(
        call(
            state,
            "POST",
            "/v1/pairings/approve",
            Some(owner),
            Some(&approve)
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, tokens) = call(
        state,
        "POST",
        "/pair/confirm",
        None,
        Some(&confirm_body(&code, Some(&secret))),
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let (_, me) = call(state, "GET", "/v1/me", Some(&access), None).await;
    (
        me["id"].as_str().unwrap().to_owned(),
        access,
        tokens["refresh_token"].as_str().unwrap().to_owned(),
    )
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn role_changes_apply_on_the_next_request_and_removal_ends_every_session(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let owner = token(&state, Role::Owner).await;
    let admin = token(&state, Role::Admin).await;
    let (id, access, refresh) = paired_device(&state, &owner, "admin").await;
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/enrollment-tokens",
            Some(&access),
            Some("{}")
        )
        .await
        .0,
        StatusCode::CREATED
    );

    let (status, users) = call(&state, "GET", "/v1/users", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(users["items"][0]["active_sessions"], 1);
    assert!(
        users["items"][0]["approved_by"]
            .as_str()
            .unwrap()
            .starts_with("api_token:"),
        "{users}"
    );
    let path = format!("/v1/users/{id}");
    assert_eq!(
        call(
            &state,
            "PATCH",
            &path,
            Some(&admin),
            Some(r#"{"role": "viewer"}"#)
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );

    // Demoted: the very next request is judged by the new role.
    assert_eq!(
        call(
            &state,
            "PATCH",
            &path,
            Some(&owner),
            Some(r#"{"role": "viewer"}"#)
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/enrollment-tokens",
            Some(&access),
            Some("{}")
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&state, "GET", "/v1/me", Some(&access), None).await.1["role"],
        "viewer"
    );
    let (status, _) = call(
        &state,
        "PATCH",
        &path,
        Some(&owner),
        Some(r#"{"role": "owner", "scope": "env=x"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Removed: access and refresh tokens stop working at once.
    assert_eq!(
        call_confirmed(
            &state,
            "DELETE",
            &format!("{path}?reason=left"),
            Some(&owner),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&state, "GET", "/v1/me", Some(&access), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let body = json!({ "refresh_token": refresh }).to_string();
    assert_eq!(
        call(&state, "POST", "/v1/auth/refresh", None, Some(&body))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (_, sessions) = call(
        &state,
        "GET",
        &format!("{path}/sessions"),
        Some(&owner),
        None,
    )
    .await;
    assert!(sessions["items"][0]["revoked_at"].is_string(), "{sessions}");
    assert_eq!(audit_count(&pool, "user.role_change").await, 1);
    assert_eq!(audit_count(&pool, "user.remove").await, 1);
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn repeated_failed_sign_ins_lock_the_client_out_with_growing_backoff(pool: PgPool) {
    let (state, clock) = state(pool).await;
    let bad = json!({ "refresh_token": "mor_not-a-real-token" }).to_string();
    let attempt = |peer: &'static str| {
        let state = state.clone();
        let bad = bad.clone();
        async move {
            call_from(
                &state,
                peer,
                &[],
                "POST",
                "/v1/auth/refresh",
                None,
                Some(&bad),
            )
            .await
        }
    };
    for _ in 0..6 {
        assert_eq!(
            (attempt("192.0.2.50:1").await.0).0,
            StatusCode::UNAUTHORIZED
        );
    }
    // The sixth failure locked the client for a minute, whatever the rate limit says.
    clock.advance(Duration::seconds(30));
    let ((status, _), headers) = attempt("192.0.2.50:1").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(
        (attempt("192.0.2.51:1").await.0).0,
        StatusCode::UNAUTHORIZED,
        "other clients are unaffected"
    );
    clock.advance(Duration::seconds(31));
    assert_eq!(
        (attempt("192.0.2.50:1").await.0).0,
        StatusCode::UNAUTHORIZED
    );
    // The next failure doubles the lock.
    let ((status, _), headers) = attempt("192.0.2.50:1").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "120");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn any_spent_refresh_token_presented_again_revokes_the_session(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let owner = token(&state, Role::Owner).await;
    let (_, _, first) = paired_device(&state, &owner, "viewer").await;
    let refresh = |t: &str| json!({ "refresh_token": t }).to_string();
    // The thief rotates twice with the stolen token before the device uses it again.
    let (_, second) = call(
        &state,
        "POST",
        "/v1/auth/refresh",
        None,
        Some(&refresh(&first)),
    )
    .await;
    let second = second["refresh_token"].as_str().unwrap().to_owned();
    let (_, third) = call(
        &state,
        "POST",
        "/v1/auth/refresh",
        None,
        Some(&refresh(&second)),
    )
    .await;
    let third_access = third["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/auth/refresh",
            None,
            Some(&refresh(&first))
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&state, "GET", "/v1/me", Some(&third_access), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "the thief's session died"
    );
    assert_eq!(audit_count(&pool, "session.refresh_reuse").await, 1);
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn an_approval_dies_with_its_approver_and_nobody_grants_above_their_role(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let owner = token(&state, Role::Owner).await;
    let (admin_id, admin, _) = paired_device(&state, &owner, "admin").await;

    // The admin approves a device, then is removed before the device confirms.
    let (code, secret) = start(&state).await;
    let approve =
        json!({ "pairing_code": code, "role": "admin", "device_name": "late" }).to_string();
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/pairings/approve",
            Some(&admin),
            Some(&approve)
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        call_confirmed(
            &state,
            "DELETE",
            &format!("/v1/users/{admin_id}?reason=demoted"),
            Some(&owner),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    let (status, body) = call(
        &state,
        "POST",
        "/pair/confirm",
        None,
        Some(&confirm_body(&code, Some(&secret))),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["message"].as_str().unwrap().contains("approver"),
        "{body}"
    );

    // Even if the policy lets viewers approve, a viewer cannot approve an admin.
    sqlx::query(
        "insert into rbac_rules (ptype, v0, v1, v2) values ('p', 'viewer', 'pairings', 'approve')",
    )
    .execute(&pool)
    .await
    .unwrap();
    state.authz.reload(&pool).await.unwrap();
    let viewer = token(&state, Role::Viewer).await;
    let (code, _) = start(&state).await;
    let escalate = json!({ "pairing_code": code, "role": "admin", "device_name": "x" }).to_string();
    assert_eq!(
        call(
            &state,
            "POST",
            "/v1/pairings/approve",
            Some(&viewer),
            Some(&escalate)
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );

    // And even if admins could manage users, a device cannot change itself.
    sqlx::query(
        "insert into rbac_rules (ptype, v0, v1, v2) values ('p', 'admin', 'users', 'manage')",
    )
    .execute(&pool)
    .await
    .unwrap();
    state.authz.reload(&pool).await.unwrap();
    let (self_id, self_access, _) = paired_device(&state, &owner, "admin").await;
    let path = format!("/v1/users/{self_id}");
    assert_eq!(
        call(
            &state,
            "PATCH",
            &path,
            Some(&self_access),
            Some(r#"{"role": "viewer"}"#)
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    let (other_id, _, _) = paired_device(&state, &owner, "viewer").await;
    let other = format!("/v1/users/{other_id}");
    assert_eq!(
        call(
            &state,
            "PATCH",
            &other,
            Some(&self_access),
            Some(r#"{"role": "owner"}"#)
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &state,
            "PATCH",
            &other,
            Some(&self_access),
            Some(r#"{"role": "admin"}"#)
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn a_client_adding_its_own_forwarded_for_line_behind_a_proxy_gains_no_budget(pool: PgPool) {
    let (state, _) = state(pool).await;
    // The trusted proxy (10.9.9.9) appends its own line with the real client after the client's.
    for i in 0..10 {
        let spoof = format!("198.51.100.{i}");
        let headers = [
            ("x-forwarded-for", spoof.as_str()),
            ("x-forwarded-for", "203.0.113.77"),
        ];
        assert_eq!(
            (call_from(
                &state,
                "10.9.9.9:1",
                &headers,
                "POST",
                "/pair/start",
                None,
                None
            )
            .await
            .0)
                .0,
            StatusCode::OK
        );
    }
    let headers = [
        ("x-forwarded-for", "198.51.100.99"),
        ("x-forwarded-for", "203.0.113.77"),
    ];
    let ((status, _), _) = call_from(
        &state,
        "10.9.9.9:1",
        &headers,
        "POST",
        "/pair/start",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}
