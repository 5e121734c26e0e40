//! Single sign-on against a real OpenID provider (npm `oidc-provider` on loopback): browser
//! sign-in with PKCE, state and nonce, group → role mapping, cookie sessions with CSRF, several
//! providers, and the attack set — each attack rejected with no session created.

use moltops_e2e::{Browser, Fixture, Idp, ServerOptions};
use serde_json::{Value, json};

const SECRET: &str = "corp-client-secret"; // pragma: allowlist secret

fn provider_toml(name: &str, issuer: &str, secret_file: Option<&std::path::Path>) -> String {
    let secret = secret_file
        .map(|p| format!("client_secret_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        r#"
[[oidc]]
name = "{name}"
display_name = "{name} SSO"
issuer = "{issuer}"
client_id = "moltops-{name}"
{secret}roles = [
  {{ group = "moltops-owners", role = "owner" }},
  {{ group = "moltops-admins", role = "admin" }},
  {{ group = "staging-admins", role = "admin", scope = "env=staging" }},
  {{ group = "moltops-viewers", role = "viewer" }},
]
"#
    )
}

/// A control plane configured with one provider `corp` on its own IdP.
async fn setup() -> (Fixture, Idp) {
    let idp = Idp::start().await;
    let dir = moltops_e2e::scratch("sso-secret");
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("corp.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let fx = Fixture::start(ServerOptions {
        config_toml: Some(provider_toml("corp", &idp.issuer, Some(&secret_file))),
        ..ServerOptions::default()
    })
    .await;
    idp.register_client("moltops-corp", SECRET, &callback_url(&fx, "corp"))
        .await;
    (fx, idp)
}

fn callback_url(fx: &Fixture, provider: &str) -> String {
    fx.server()
        .url(&format!("/v1/auth/oidc/{provider}/callback"))
}

/// Runs a browser from `/login` to the point where the provider redirects back; returns the
/// callback URL (not yet visited).
async fn to_callback(fx: &Fixture, browser: &Browser, provider: &str) -> String {
    browser
        .follow_until(
            &fx.server().url(&format!("/v1/auth/oidc/{provider}/login")),
            &callback_url(fx, provider),
        )
        .await
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn csrf_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("moltops_csrf="))
        .map(|rest| rest.split(';').next().unwrap_or_default().to_owned())
}

async fn sessions_in_db(fx: &Fixture) -> i64 {
    let db = fx.db.as_ref().unwrap();
    let mut conn = db.connect().await;
    sqlx::query_scalar("select count(*) from device_sessions where sso_user_id is not null")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_user_signs_in_through_the_provider_and_sees_exactly_what_the_mapped_role_allows() {
    let (fx, idp) = setup().await;
    let (staging, _) = fx.enroll("staging", json!({ "env": "staging" })).await;
    let (prod, _) = fx.enroll("prod", json!({ "env": "prod" })).await;

    // The sign-in screen lists the provider.
    let (status, list) = json_of(
        Browser::new()
            .get(&fx.server().url("/v1/auth/providers"))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["providers"][0]["name"], "corp");
    assert_eq!(list["providers"][0]["display_name"], "corp SSO");
    // The sign-in list shows no mappings; admins read them, in order, from their own endpoint.
    assert!(list["providers"][0].get("rules").is_none());
    let (_, mappings) = fx.api.get("/v1/auth/role-mappings").await;
    let rules = &mappings["providers"][0]["rules"];
    assert_eq!(
        rules[0],
        json!({ "group": "moltops-owners", "role": "owner", "scope": "" })
    );
    assert_eq!(
        rules[2],
        json!({ "group": "staging-admins", "role": "admin", "scope": "env=staging" })
    );
    assert_eq!(mappings["providers"][0]["groups_claim"], "groups");

    // A staging admin signs in.
    idp.set_account("alice", "alice@example.test", &["staff", "staging-admins"])
        .await;
    let browser = Browser::new();
    let login = browser
        .get(&fx.server().url("/v1/auth/oidc/corp/login"))
        .await;
    assert_eq!(login.status(), 302);
    let authorize = login.headers()["location"].to_str().unwrap().to_owned();
    assert!(authorize.starts_with(&idp.issuer), "{authorize}");
    assert!(
        authorize.contains("code_challenge_method=S256"),
        "{authorize}"
    );
    assert!(authorize.contains("nonce="), "{authorize}");
    let binding = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        binding.contains("HttpOnly") && binding.contains("SameSite=Lax"),
        "{binding}"
    );
    let callback = browser
        .follow_until(&authorize, &callback_url(&fx, "corp"))
        .await;
    let signed_in = browser.get(&callback).await;
    assert_eq!(signed_in.status(), 200);
    let cookies: Vec<String> = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session_cookie = cookies
        .iter()
        .find(|c| c.starts_with("moltops_session="))
        .unwrap();
    assert!(session_cookie.contains("HttpOnly") && session_cookie.contains("SameSite=Strict"));
    // Plain HTTP on loopback here: Secure is set only when the public URL is HTTPS.
    assert!(!session_cookie.contains("Secure"));
    let csrf = csrf_cookie(&signed_in).unwrap();

    // The cookie session is who the provider said, with the mapped role and scope.
    let (status, me) = json_of(browser.get(&fx.server().url("/v1/me")).await).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["kind"], "sso_user");
    assert_eq!(me["name"], "alice@example.test");
    assert_eq!(me["role"], "admin");
    assert_eq!(me["scope"], "env=staging");
    let (status, nodes) = json_of(browser.get(&fx.server().url("/v1/nodes")).await).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![staging.as_str()]);
    let (status, _) = json_of(
        browser
            .get(&fx.server().url(&format!("/v1/nodes/{prod}")))
            .await,
    )
    .await;
    assert_eq!(
        status, 404,
        "a node outside the scope does not exist for this user"
    );

    // Writes with the cookie need the CSRF header.
    let label = |csrf: Option<&str>| {
        let mut request = browser
            .client
            .patch(fx.server().url(&format!("/v1/nodes/{staging}")))
            .json(&json!({ "labels": { "env": "staging", "team": "a" } }));
        if let Some(c) = csrf {
            request = request.header("x-csrf-token", c);
        }
        request.send()
    };
    let (status, body) = json_of(label(None).await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("csrf_failed")));
    let (status, body) = json_of(label(Some("forged")).await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("csrf_failed")));
    let (status, body) = json_of(label(Some(&csrf)).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");

    // An SSO admin approves a device pairing; the device confirms and inherits the scope.
    let api = reqwest::Client::new();
    let started: Value = api
        .post(fx.server().url("/pair/start"))
        .json(&json!({ "device_name": "kiosk" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let approved = browser
        .client
        .post(fx.server().url("/v1/pairings/approve"))
        .header("x-csrf-token", &csrf)
        .json(&json!({ "pairing_code": started["pairing_code"], "role": "viewer", "device_name": "kiosk" }))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200);
    let (status, tokens) = json_of(
        api.post(fx.server().url("/pair/confirm"))
            .json(&json!({
                "pairing_code": started["pairing_code"], "device_name": "kiosk",
                "pairing_secret": started["pairing_secret"],
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let (_, device) = json_of(
        api.get(fx.server().url("/v1/me"))
            .bearer_auth(tokens["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (device["role"].as_str(), device["scope"].as_str()),
        (Some("viewer"), Some("env=staging"))
    );

    // Admin of staging only: no users list, no API tokens.
    let (status, _) = json_of(browser.get(&fx.server().url("/v1/users")).await).await;
    assert_eq!(status, 403);

    // Keyed by (issuer, subject): a new email is the same user; a new subject is a new user.
    let again = Browser::new();
    idp.set_account("alice", "alice@new.example.test", &["staging-admins"])
        .await;
    let callback = to_callback(&fx, &again, "corp").await;
    assert_eq!(again.get(&callback).await.status(), 200);
    idp.set_account("mallory", "alice@example.test", &["moltops-viewers"])
        .await;
    let other = Browser::new();
    let callback = to_callback(&fx, &other, "corp").await;
    assert_eq!(other.get(&callback).await.status(), 200);
    let (_, users) = fx.api.get("/v1/users").await;
    let sso: Vec<&Value> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["kind"] == "sso")
        .collect();
    assert_eq!(sso.len(), 2, "{users}");
    let alice = sso
        .iter()
        .find(|u| u["email"] == "alice@new.example.test")
        .unwrap();
    assert_eq!(alice["role"], "admin");
    assert_eq!(alice["active_sessions"], 2);
    let mallory = sso
        .iter()
        .find(|u| u["email"] == "alice@example.test")
        .unwrap();
    assert_eq!(mallory["role"], "viewer");
    // A viewer cannot write, CSRF or not.
    let (status, me) = json_of(other.get(&fx.server().url("/v1/me")).await).await;
    assert_eq!((status, me["role"].as_str()), (200, Some("viewer")));

    // An SSO user's role is the provider's business: the users API refuses to edit it.
    let alice_id = alice["id"].as_str().unwrap().to_owned();
    let (status, body) = fx
        .api
        .send(
            reqwest::Method::PATCH,
            &format!("/v1/users/{alice_id}"),
            Some(json!({ "role": "viewer" })),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );

    // Logout ends the session at once.
    let logout = browser
        .client
        .post(fx.server().url("/v1/auth/logout"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    assert_eq!(browser.get(&fx.server().url("/v1/me")).await.status(), 401);

    // Losing the group at the provider: the next sign-in is refused and ends every session.
    idp.set_account("alice", "alice@new.example.test", &["staff"])
        .await;
    let lost = Browser::new();
    let callback = to_callback(&fx, &lost, "corp").await;
    let (status, body) = json_of(lost.get(&callback).await).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("no_role")),
        "{body}"
    );
    assert_eq!(again.get(&fx.server().url("/v1/me")).await.status(), 401);

    // An owner disables a user: sessions end now and later sign-ins are refused.
    let mallory_id = mallory["id"].as_str().unwrap().to_owned();
    let (status, _) = fx
        .api
        .confirmed(
            reqwest::Method::DELETE,
            &format!("/v1/users/{mallory_id}?reason=offboarded"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(other.get(&fx.server().url("/v1/me")).await.status(), 401);
    idp.set_account("mallory", "alice@example.test", &["moltops-viewers"])
        .await;
    let retry = Browser::new();
    let callback = to_callback(&fx, &retry, "corp").await;
    let (status, body) = json_of(retry.get(&callback).await).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("user_disabled")),
        "{body}"
    );
    fx.finish().await;
}

#[tokio::test]
async fn a_user_with_no_mapped_group_gets_no_access_at_all() {
    let (fx, idp) = setup().await;
    idp.set_account("bob", "bob@example.test", &["engineering"])
        .await;
    let browser = Browser::new();
    let callback = to_callback(&fx, &browser, "corp").await;
    let response = browser.get(&callback).await;
    assert!(
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("moltops_session="))
    );
    let (status, body) = json_of(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("no_role")),
        "{body}"
    );
    assert_eq!(browser.get(&fx.server().url("/v1/me")).await.status(), 401);
    assert_eq!(sessions_in_db(&fx).await, 0);
    fx.finish().await;
}

#[tokio::test]
async fn the_attack_set_is_rejected_and_creates_no_session() {
    let (fx, idp) = setup().await;
    idp.set_account("eve", "eve@example.test", &["moltops-owners"])
        .await;

    // Wrong state: the provider's answer is delivered with a state we never issued.
    let browser = Browser::new();
    let callback = to_callback(&fx, &browser, "corp").await;
    let forged = replace_param(&callback, "state", "forged-state");
    check(
        &browser,
        &forged,
        ("wrong state", 400, "invalid_state", "state"),
    )
    .await;

    // Replayed callback (same code and state, same browser): the state is single-use.
    let browser = Browser::new();
    let callback = to_callback(&fx, &browser, "corp").await;
    assert_eq!(browser.get(&callback).await.status(), 200);
    check(
        &browser,
        &callback,
        ("replayed callback", 400, "invalid_state", "already used"),
    )
    .await;

    // Replayed code under a fresh, valid state: the provider refuses the code again.
    let fresh = to_callback(&fx, &browser, "corp").await;
    let code = param(&callback, "code");
    let replayed = replace_param(&fresh, "code", &code);
    check(
        &browser,
        &replayed,
        ("replayed code", 401, "sso_failed", "invalid_grant"),
    )
    .await;

    // The callback in another browser than the one that started (login CSRF / stolen URL).
    let victim = Browser::new();
    let started = Browser::new();
    let callback = to_callback(&fx, &started, "corp").await;
    check(
        &victim,
        &callback,
        ("other browser", 400, "invalid_state", "another browser"),
    )
    .await;

    // Tampered ID tokens, each from the real provider's real token endpoint.
    for (mode, what, why) in [
        ("wrong_nonce", "wrong nonce", "nonce mismatch"),
        ("wrong_aud", "wrong audience", "Invalid audiences"),
        ("expired", "expired ID token", "expired"),
        (
            "alg_none",
            "unsigned (alg: none)",
            "Signature verification failed",
        ),
        (
            "other_key",
            "signed by another key",
            "Signature verification failed",
        ),
        ("wrong_iss", "wrong issuer", "Invalid issuer"),
    ] {
        idp.tamper(mode).await;
        let browser = Browser::new();
        let callback = to_callback(&fx, &browser, "corp").await;
        check(&browser, &callback, (what, 401, "sso_failed", why)).await;
    }
    idp.tamper("off").await;

    // The provider reports an error instead of a code.
    let browser = Browser::new();
    let callback = to_callback(&fx, &browser, "corp").await;
    let denied = format!(
        "{}?error=access_denied&state={}",
        callback_url(&fx, "corp"),
        param(&callback, "state")
    );
    check(
        &browser,
        &denied,
        ("provider error", 401, "sso_failed", "access_denied"),
    )
    .await;

    // Only the one honest sign-in above made a session; every refusal is in the audit log.
    assert_eq!(sessions_in_db(&fx).await, 1);
    let mut conn = fx.db.as_ref().unwrap().connect().await;
    let refused: i64 = sqlx::query_scalar(
        "select count(*) from audit_events where action = 'sso.login' and outcome = 'denied'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(refused >= 10, "{refused} refused sign-ins audited");
    // And after all that, an honest sign-in still works: SSO has no lockout to trip.
    let browser = Browser::new();
    let callback = to_callback(&fx, &browser, "corp").await;
    assert_eq!(browser.get(&callback).await.status(), 200);
    fx.finish().await;
}

/// Visits `url` and expects a refusal with `status`, `code` and `why` in the message.
async fn check(browser: &Browser, url: &str, (what, status, code, why): (&str, u16, &str, &str)) {
    let response = browser.get(url).await;
    assert!(
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("moltops_session=")),
        "{what}: a session cookie was set"
    );
    let (got, body) = json_of(response).await;
    assert_eq!(
        (got, body["code"].as_str()),
        (status, Some(code)),
        "{what}: {body}"
    );
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(why), "{what}: {message}");
}

fn param(url: &str, name: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

fn replace_param(url: &str, name: &str, value: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.to_string()
}

#[tokio::test]
async fn several_providers_sign_in_side_by_side() {
    let first = Idp::start().await;
    let second = Idp::start().await;
    let mut toml = provider_toml("corp", &first.issuer, None);
    toml.push_str(&provider_toml("partner", &second.issuer, None));
    let fx = Fixture::start(ServerOptions {
        config_toml: Some(toml),
        env: vec![
            (
                "MOLTOPS_OIDC_CORP_CLIENT_SECRET".into(),
                "first-secret".into(),
            ),
            (
                "MOLTOPS_OIDC_PARTNER_CLIENT_SECRET".into(),
                "second-secret".into(),
            ),
        ],
        ..ServerOptions::default()
    })
    .await;
    first
        .register_client("moltops-corp", "first-secret", &callback_url(&fx, "corp"))
        .await;
    second
        .register_client(
            "moltops-partner",
            "second-secret",
            &callback_url(&fx, "partner"),
        )
        .await;
    // The same subject at two issuers is two users.
    first
        .set_account("u1", "u1@corp.test", &["moltops-viewers"])
        .await;
    second
        .set_account("u1", "u1@partner.test", &["moltops-admins"])
        .await;
    for (provider, role) in [("corp", "viewer"), ("partner", "admin")] {
        let browser = Browser::new();
        let callback = to_callback(&fx, &browser, provider).await;
        assert_eq!(browser.get(&callback).await.status(), 200, "{provider}");
        let (_, me) = json_of(browser.get(&fx.server().url("/v1/me")).await).await;
        assert_eq!(me["role"], role, "{provider}");
    }
    // A provider's answer is not accepted at another provider's callback.
    let browser = Browser::new();
    let callback = to_callback(&fx, &browser, "corp").await;
    let crossed = callback.replace("/oidc/corp/", "/oidc/partner/");
    check(
        &browser,
        &crossed,
        ("provider mix-up", 400, "invalid_state", "state"),
    )
    .await;
    let (status, _) = json_of(
        browser
            .get(&fx.server().url("/v1/auth/oidc/nobody/login"))
            .await,
    )
    .await;
    assert_eq!(status, 404);
    fx.finish().await;
}

fn hidden_field(page: &str, name: &str) -> String {
    let marker = format!("name={name} value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_cli_signs_in_through_the_browser_and_gets_a_token_with_the_mapped_role() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let (fx, idp) = setup().await;
    idp.set_account("carol", "carol@example.test", &["moltops-viewers"])
        .await;
    let config = fx.dir.join("cli-config");
    let server = fx.server().url("");
    let mut login = Command::new(moltops_e2e::binary("moltopsctl"))
        .args([
            "--server",
            &server,
            "login",
            "--sso",
            "corp",
            "--no-browser",
            "--poll-interval-ms",
            "200",
        ])
        .env("MOLTOPS_CONFIG_DIR", &config)
        .env_remove("MOLTOPS_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(login.stdout.take().unwrap()).lines();
    let url = lines.next().unwrap().unwrap();
    let url = url
        .strip_prefix("sign in: ")
        .unwrap_or_else(|| panic!("{url}"))
        .to_owned();
    let code = lines.next().unwrap().unwrap();
    let code = code
        .strip_prefix("confirm code: ")
        .unwrap_or_else(|| panic!("{code}"))
        .to_owned();
    assert!(url.starts_with(&server), "{url}");

    // The person signs in in a browser; the page says where the sign-in started and asks for
    // the code the terminal shows (it does not show it: someone who was sent the link cannot
    // just click through).
    let browser = Browser::new();
    let callback = browser.follow_until(&url, &callback_url(&fx, "corp")).await;
    let page = browser.get(&callback).await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("moltops_session=")),
        "no browser session for a CLI sign-in"
    );
    let page = page.text().await.unwrap();
    assert!(!page.contains(&code), "{page}");
    assert!(page.contains("carol@example.test"), "{page}");
    assert!(page.contains("127.0.0.1"), "{page}");
    let login_id = hidden_field(&page, "login_id");
    let approval = hidden_field(&page, "approval");

    // A forged confirmation, or the wrong code, does nothing.
    let approve = |approval: String, typed: String| {
        browser
            .client
            .post(fx.server().url("/v1/auth/cli/approve"))
            .form(&[
                ("login_id", login_id.clone()),
                ("approval", approval),
                ("user_code", typed),
            ])
            .send()
    };
    assert_eq!(
        approve("guess".into(), code.clone())
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        approve(approval.clone(), "AAAA-AAAA".into())
            .await
            .unwrap()
            .status(),
        400
    );
    let confirmed = approve(approval.clone(), code.to_lowercase())
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);
    let status = moltops_e2e::wait_exit(&mut login, moltops_e2e::DEADLINE).expect("login exits");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut login.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");

    let ctl = |args: &[&str]| {
        Command::new(moltops_e2e::binary("moltopsctl"))
            .arg("--server")
            .arg(&server)
            .args(args)
            .env("MOLTOPS_CONFIG_DIR", &config)
            .env_remove("MOLTOPS_TOKEN")
            .output()
            .unwrap()
    };
    let whoami = ctl(&["whoami"]);
    let text = String::from_utf8_lossy(&whoami.stdout);
    assert!(
        whoami.status.success()
            && text.contains("sso_user carol@example.test")
            && text.contains("role viewer"),
        "{text}"
    );
    assert!(ctl(&["nodes", "list"]).status.success());
    let refused = ctl(&["enrollment-tokens", "create"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "a viewer cannot create enrollment tokens"
    );

    // The confirmation is single-use, and logout ends the CLI's session.
    assert_eq!(
        approve(approval.clone(), code.clone())
            .await
            .unwrap()
            .status(),
        400
    );
    // The CLI sign-in's steps are in the audit log (the walk test in control-plane/tests
    // cannot drive them without a provider).
    let mut conn = fx.db.as_ref().unwrap().connect().await;
    for action in ["sso.cli_start", "sso.cli_approve", "session.login"] {
        let n: i64 = sqlx::query_scalar("select count(*) from audit_events where action = $1")
            .bind(action)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(n >= 1, "no {action} audit row");
    }
    assert!(ctl(&["logout"]).status.success());
    assert!(!ctl(&["whoami"]).status.success());
    fx.finish().await;
}

#[tokio::test]
async fn a_mapping_changed_in_the_config_applies_at_restart() {
    let (mut fx, idp) = setup().await;
    idp.set_account("dave", "dave@example.test", &["moltops-admins"])
        .await;
    let browser = Browser::new();
    let callback = to_callback(&fx, &browser, "corp").await;
    assert_eq!(browser.get(&callback).await.status(), 200);
    let (_, me) = json_of(browser.get(&fx.server().url("/v1/me")).await).await;
    assert_eq!(me["role"], "admin");
    // The operator narrows the mapping: moltops-admins become viewers; restart.
    let toml = fx.options.config_toml.clone().unwrap();
    fx.options.config_toml = Some(toml.replace(
        r#"{ group = "moltops-admins", role = "admin" }"#,
        r#"{ group = "moltops-admins", role = "viewer" }"#,
    ));
    fx.restart_server().await;
    let (_, me) = json_of(browser.get(&fx.server().url("/v1/me")).await).await;
    assert_eq!(
        me["role"], "viewer",
        "applied to the live session at start-up"
    );
    // Removed from the mapping entirely: every session ends.
    let toml = fx.options.config_toml.clone().unwrap();
    fx.options.config_toml =
        Some(toml.replace("  { group = \"moltops-admins\", role = \"viewer\" },\n", ""));
    fx.restart_server().await;
    assert_eq!(browser.get(&fx.server().url("/v1/me")).await.status(), 401);
    fx.finish().await;
}
