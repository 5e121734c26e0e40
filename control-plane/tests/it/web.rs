//! The browser side: the web admin's files at `/` (never shadowing the API), with a strict
//! content security policy; a browser pairs into a cookie session (no token a script can read);
//! `/v1/me` tells the page what the role may do.

use std::sync::Arc;

use axum::http::StatusCode;
use moltops_server::auth::Role;
use serde_json::Value;
use sqlx::PgPool;

use crate::{call, call_from, state, token};

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn the_web_admin_is_served_at_the_root_and_never_shadows_the_api(pool: PgPool) {
    let (mut state, _) = state(pool).await;
    let dir = std::env::temp_dir().join(format!("moltops-web-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(
        dir.join("index.html"),
        "<!doctype html><title>moltops</title>",
    )
    .unwrap();
    std::fs::write(dir.join("assets/app-1a2b.js"), "console.log(1)").unwrap();
    std::fs::write(dir.join(".secret"), "no").unwrap();
    let mut settings = (*state.settings).clone();
    settings.web_dir = Some(dir.clone());
    state.settings = Arc::new(settings);

    let get = |path: &'static str| {
        let state = state.clone();
        async move { call_from(&state, "192.0.2.1:40000", &[], "GET", path, None, None).await }
    };
    // The app, and its client-side routes, get index.html under a strict policy.
    for route in ["/", "/nodes/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "/audit"] {
        let ((status, body), headers) = get(route).await;
        assert_eq!(status, StatusCode::OK, "{route}");
        assert_eq!(
            body,
            Value::String("<!doctype html><title>moltops</title>".into())
        );
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["cache-control"], "no-cache");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(headers["x-frame-options"], "DENY");
    }
    let ((status, _), headers) = get("/assets/app-1a2b.js").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    // Missing files, hidden files and climbing out are 404s, not the app.
    for path in [
        "/assets/missing.js",
        "/.secret",
        "/assets/../.secret",
        "/%2e%2e/etc/passwd",
    ] {
        let ((status, body), _) = get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    // The API's own 404 stays JSON, and writes never reach the files.
    let ((status, body), _) = get("/v1/no-such-thing").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = call(&state, "POST", "/", None, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn without_a_built_web_admin_the_root_says_how_to_build_it(pool: PgPool) {
    let (state, _) = state(pool).await;
    let ((status, body), headers) =
        call_from(&state, "192.0.2.1:40000", &[], "GET", "/", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.as_str().unwrap().contains("npm run build"));
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn a_browser_pairs_into_a_cookie_session_and_learns_what_it_may_do(pool: PgPool) {
    use rand::SeedableRng;
    let (state, _) = state(pool.clone()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let code = moltops_server::pairing::setup_code_if_ownerless(&pool, crate::t0(), &mut rng)
        .await
        .unwrap()
        .unwrap();
    let body =
        serde_json::json!({ "pairing_code": code, "device_name": "browser", "session": "cookie" })
            .to_string();
    let ((status, answer), headers) = call_from(
        &state,
        "192.0.2.1:40000",
        &[],
        "POST",
        "/pair/confirm",
        None,
        Some(&body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // No secret in the body: the session is in an HttpOnly cookie.
    assert_eq!(answer["session"], "cookie");
    assert!(answer.get("access_token").is_none() && answer.get("refresh_token").is_none());
    let cookies: Vec<String> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("moltops_session="))
        .unwrap();
    let csrf = cookies
        .iter()
        .find(|c| c.starts_with("moltops_csrf="))
        .unwrap();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(!csrf.contains("HttpOnly"), "the page must read it: {csrf}");
    let value = |c: &str| {
        c.split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned()
    };
    let (session, csrf) = (value(session), value(csrf));
    let cookie = format!("moltops_session={session}");
    let ((status, me), _) = call_from(
        &state,
        "192.0.2.1:40000",
        &[("cookie", &cookie)],
        "GET",
        "/v1/me",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(
        (me["role"].as_str(), me["kind"].as_str()),
        (Some("owner"), Some("device"))
    );
    let permissions: Vec<&str> = me["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(permissions.contains(&"users:manage") && permissions.contains(&"commands:create"));
    // A write with the cookie needs the CSRF header.
    let ((status, _), _) = call_from(
        &state,
        "192.0.2.1:40000",
        &[("cookie", &cookie)],
        "POST",
        "/v1/enrollment-tokens",
        None,
        Some("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let ((status, _), _) = call_from(
        &state,
        "192.0.2.1:40000",
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        "POST",
        "/v1/enrollment-tokens",
        None,
        Some("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // A viewer's page learns it may only read.
    let viewer = token(&state, Role::Viewer).await;
    let (_, me) = call(&state, "GET", "/v1/me", Some(&viewer), None).await;
    let permissions: Vec<&str> = me["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(permissions.contains(&"nodes:read"));
    assert!(
        !permissions
            .iter()
            .any(|p| p.ends_with(":create") || p.ends_with(":manage")),
        "{permissions:?}"
    );
}
