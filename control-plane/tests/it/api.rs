//! REST behaviour: authentication on every route, the error envelope, validation, roles, and
//! that secrets stay out of the database and the audit log.

use axum::http::StatusCode;
use moltops_server::auth::Role;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{call, state, token};

fn concrete(path: &str) -> String {
    path.replace("{node_id}", "01890000-0000-7000-8000-000000000001")
        .replace("{command_id}", "01890000-0000-7000-8000-000000000002")
        .replace("{token_id}", "01890000-0000-7000-8000-000000000003")
}

fn is_envelope(v: &Value) -> bool {
    v["code"].is_string() && v["message"].is_string() && v.as_object().is_some_and(|o| o.len() == 2)
}

/// The probes: liveness and readiness, for Kubernetes and load balancers; no bearer token.
const PROBES: &[&str] = &["/health", "/ready"];

/// The sign-in surface: the only routes besides the [`PROBES`] that take no bearer token.
const UNAUTHENTICATED: &[&str] = &[
    "/pair/start",
    "/pair/confirm",
    "/v1/auth/refresh",
    "/v1/auth/providers",
    "/v1/auth/oidc/{provider}/login",
    "/v1/auth/oidc/{provider}/callback",
    "/v1/auth/oidc/{provider}/cli",
    "/v1/auth/cli/approve",
    "/v1/auth/cli/poll",
];

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn every_route_but_the_probes_requires_a_valid_bearer_token(pool: PgPool) {
    let (state, _) = state(pool).await;
    let ops = moltops_server::http::operations();
    assert!(ops.len() >= 10);
    for op in ops {
        let path = concrete(op.path);
        let (status, body) = call(&state, &op.method.to_uppercase(), &path, None, None).await;
        if PROBES.contains(&op.path) {
            assert_eq!(status, StatusCode::OK, "{} {path}: {body}", op.method);
            continue;
        }
        if UNAUTHENTICATED.contains(&op.path) {
            // Sign-in endpoints: reachable without a token; with no body they refuse the input.
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{} {path}", op.method);
            assert!(
                status.is_client_error() || status.is_success(),
                "{} {path}: {status}",
                op.method
            );
            continue;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{} {path}", op.method);
        assert!(is_envelope(&body), "{body}");
        let (status, _) = call(
            &state,
            &op.method.to_uppercase(),
            &path,
            Some("mot_forged"),
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "forged token on {} {path}",
            op.method
        );
    }
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn viewers_read_but_cannot_write(pool: PgPool) {
    let (state, _) = state(pool).await;
    let viewer = token(&state, Role::Viewer).await;
    let (status, _) = call(&state, "GET", "/v1/nodes", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(
        &state,
        "POST",
        "/v1/enrollment-tokens",
        Some(&viewer),
        Some("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "forbidden");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn bad_input_gets_the_right_status_and_the_envelope(pool: PgPool) {
    let (state, _) = state(pool).await;
    let owner = token(&state, Role::Owner).await;
    let check = |method: &'static str,
                 path: &'static str,
                 body: Option<&'static str>,
                 expected: StatusCode| {
        let state = state.clone();
        let owner = owner.clone();
        async move {
            let (status, value) = call(&state, method, path, Some(&owner), body).await;
            assert_eq!(status, expected, "{method} {path} {body:?}: {value}");
            assert!(is_envelope(&value), "{value}");
        }
    };
    check(
        "POST",
        "/v1/enrollment-tokens",
        Some("{not json"),
        StatusCode::BAD_REQUEST,
    )
    .await;
    check(
        "POST",
        "/v1/enrollment-tokens",
        Some(r#"{"ttl_seconds": 5}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    check(
        "POST",
        "/v1/enrollment-tokens",
        Some(r#"{"max_uses": 0}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    check(
        "POST",
        "/v1/enrollment-tokens",
        Some(r#"{"surprise": 1}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    check(
        "POST",
        "/v1/enrollment-tokens",
        Some(r#"{"labels": {"bad key": "x"}}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    check(
        "POST",
        "/v1/enrollment-tokens",
        Some(r#"{"note": "nul \u0000 byte"}"#),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    check("GET", "/v1/nodes?limit=0", None, StatusCode::BAD_REQUEST).await;
    check(
        "GET",
        "/v1/nodes?status=sleeping",
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    check(
        "GET",
        "/v1/nodes?selector=a%20b",
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    check("GET", "/v1/nodes?cursor=%%%", None, StatusCode::BAD_REQUEST).await;
    check("GET", "/v1/nodes/not-a-uuid", None, StatusCode::NOT_FOUND).await;
    check(
        "GET",
        "/v1/nodes/01890000-0000-7000-8000-000000000009",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    check(
        "DELETE",
        "/v1/enrollment-tokens/01890000-0000-7000-8000-000000000009",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    check("GET", "/v1/no-such-route", None, StatusCode::NOT_FOUND).await;
    check("PUT", "/v1/nodes", None, StatusCode::METHOD_NOT_ALLOWED).await;

    // A JSON body without a JSON content type.
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/enrollment-tokens")
        .header("authorization", format!("Bearer {owner}"))
        .body(axum::body::Body::from("{}"))
        .unwrap();
    let response = tower::ServiceExt::oneshot(moltops_server::http::router(state.clone()), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // The same for the optional revoke body, when one is sent.
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/nodes/01890000-0000-7000-8000-000000000009/revoke")
        .header("authorization", format!("Bearer {owner}"))
        .header("content-type", "text/plain")
        .body(axum::body::Body::from(r#"{"reason": "x"}"#))
        .unwrap();
    let response = tower::ServiceExt::oneshot(moltops_server::http::router(state.clone()), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // An oversized body is 413, in the envelope.
    let big = format!(r#"{{"note": "{}"}}"#, "x".repeat(300 * 1024));
    let (status, value) = call(
        &state,
        "POST",
        "/v1/enrollment-tokens",
        Some(&owner),
        Some(&big),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(is_envelope(&value), "{value}");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn expired_and_revoked_api_tokens_are_refused(pool: PgPool) {
    let (state, clock) = state(pool.clone()).await;
    let created = moltops_server::api_tokens::create(
        &pool,
        &moltops_server::auth::Actor::System { what: "test" },
        "short",
        Role::Admin,
        "",
        Some(chrono::Duration::hours(1)),
        clock_now(&state),
    )
    .await
    .unwrap();
    let secret = created.secret.to_string();
    assert_eq!(
        call(&state, "GET", "/v1/nodes", Some(&secret), None)
            .await
            .0,
        StatusCode::OK
    );
    clock.advance(chrono::Duration::hours(2));
    assert_eq!(
        call(&state, "GET", "/v1/nodes", Some(&secret), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    let other = token(&state, Role::Admin).await;
    sqlx::query("update api_tokens set revoked_at = now() where name = 'test-admin-'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        call(&state, "GET", "/v1/nodes", Some(&other), None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

fn clock_now(state: &moltops_server::serve::AppState) -> chrono::DateTime<chrono::Utc> {
    state.clock.now()
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn token_secrets_are_shown_once_and_never_stored_or_audited(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let owner = token(&state, Role::Owner).await;
    let (status, created) = call(
        &state,
        "POST",
        "/v1/enrollment-tokens",
        Some(&owner),
        Some(r#"{"labels": {"env": "prod"}, "note": "rack 4", "max_uses": 3, "ttl_seconds": 600}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = created["token"].as_str().unwrap();
    assert!(
        secret.starts_with("moe_") && secret.len() >= 4 + 32,
        "at least 192 bits"
    );
    assert_eq!(created["ca_pin"], state.ca.pin());
    assert_eq!(created["max_uses"], 3);
    assert_eq!(created["expires_at"], json!("2027-01-15T08:10:00Z"));
    let command = created["enroll_command"].as_str().unwrap();
    assert!(
        command.contains("--server cp.example:7338") && command.contains(state.ca.pin()),
        "{command}"
    );

    // Nothing in the database holds either secret in clear.
    let dump: String = sqlx::query_scalar(
        "select coalesce(string_agg(t::text, ' '), '') from (
            select row_to_json(e)::text as t from enrollment_tokens e
            union all select row_to_json(a)::text from audit_events a
            union all select row_to_json(k)::text from api_tokens k) s",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        !dump.contains(secret),
        "enrollment token secret stored in clear"
    );
    assert!(!dump.contains(&owner), "API token secret stored in clear");
    assert!(
        dump.contains("enrollment_token.create"),
        "creation is audited"
    );

    let (_, list) = call(&state, "GET", "/v1/enrollment-tokens", Some(&owner), None).await;
    assert!(!list.to_string().contains(secret));
    assert_eq!(list["items"][0]["state"], "active");
    assert_eq!(list["items"][0]["note"], "rack 4");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn the_ca_key_is_stored_sealed(pool: PgPool) {
    use rand::SeedableRng;
    let kek = moltops_server::crypto::KeyEncryptionKey::from_bytes([7; 32]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let ca = CertificateAuthority::load_or_create(&pool, &kek, crate::t0(), &mut rng)
        .await
        .unwrap();
    let again = CertificateAuthority::load_or_create(&pool, &kek, crate::t0(), &mut rng)
        .await
        .unwrap();
    assert_eq!(ca.pin(), again.pin(), "a second start loads the same CA");
    let sealed: Vec<u8> = sqlx::query_scalar("select key_sealed from certificate_authority")
        .fetch_one(&pool)
        .await
        .unwrap();
    // A PKCS#8 EC key starts with this DER prefix; sealed bytes must not contain it.
    let pkcs8_prefix = [0x30, 0x81, 0x87, 0x02, 0x01, 0x00];
    assert!(
        !sealed
            .windows(pkcs8_prefix.len())
            .any(|w| w == pkcs8_prefix)
    );
    let wrong = moltops_server::crypto::KeyEncryptionKey::from_bytes([8; 32]);
    let err = CertificateAuthority::load_or_create(&pool, &wrong, crate::t0(), &mut rng)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("same MOLTOPS_MASTER_KEY"), "{err}");
}

use moltops_server::ca::CertificateAuthority;
