//! Single sign-on with OpenID Connect: the authorization-code flow with PKCE (S256), `state` and
//! `nonce`, exact redirect URI, and full ID-token validation (signature by the provider's
//! published keys, RS256 only; `iss`, `aud`, expiry, nonce) by the `openidconnect` crate.
//!
//! Flow state lives in Postgres (`oidc_logins`), so any replica may serve the callback. The PKCE
//! verifier is never stored on the server: it is the value of a per-sign-in binding cookie in the
//! browser that started the sign-in, and the database keeps only its hash. So a callback works
//! only in the browser that began it (no login CSRF), only once (the row is consumed atomically),
//! and a stolen code is useless without the cookie.
//!
//! Users are keyed by (issuer, subject), never by email. The role comes from the configured
//! group mapping at each sign-in; the first matching rule wins and no match means no access.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse as _,
};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::{Actor, Role};
use crate::crypto::hash_secret;

/// How long a sign-in may take between `/login` and `/callback`.
pub const LOGIN_TTL: Duration = Duration::minutes(10);
/// How long discovered provider metadata (endpoints and signing keys) is reused.
pub const METADATA_TTL: Duration = Duration::minutes(10);
/// After a failed discovery, sign-ins fail fast for this long instead of each waiting on it.
pub const DISCOVERY_RETRY: Duration = Duration::seconds(10);
/// The per-sign-in binding cookie is this prefix + the sign-in id.
pub const BINDING_COOKIE_PREFIX: &str = "moltops_oidc_";

/// One `[[oidc]]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Short name used in URLs: `/v1/auth/oidc/{name}/login`.
    pub name: String,
    /// What the sign-in screen shows.
    #[serde(default)]
    pub display_name: String,
    /// The issuer URL; discovery reads `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// A file holding the client secret. Or set `MOLTOPS_OIDC_<NAME>_CLIENT_SECRET`.
    #[serde(default)]
    pub client_secret_file: Option<std::path::PathBuf>,
    /// Scopes besides `openid` (default: email, profile, groups).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID-token claim holding the user's groups (default `groups`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Group → role rules, first match wins; no match means no access.
    #[serde(default)]
    pub roles: Vec<RoleRule>,
}

fn default_scopes() -> Vec<String> {
    vec!["email".into(), "profile".into(), "groups".into()]
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// `{ group = "platform-admins", role = "admin", scope = "env=staging" }`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    pub group: String,
    pub role: Role,
    #[serde(default)]
    pub scope: String,
}

impl ProviderConfig {
    /// Checks what can be checked before the provider is ever contacted.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(format!(
                "oidc provider name {:?} must be 1-32 characters of a-z, 0-9 and '-'",
                self.name
            ));
        }
        IssuerUrl::new(self.issuer.clone())
            .map_err(|e| format!("oidc provider {}: issuer: {e}", self.name))?;
        if self.client_id.is_empty() {
            return Err(format!("oidc provider {}: client_id is empty", self.name));
        }
        if self.roles.is_empty() {
            return Err(format!(
                "oidc provider {}: no [[oidc.roles]] rules: nobody could sign in",
                self.name
            ));
        }
        for rule in &self.roles {
            if rule.role == Role::Owner && !rule.scope.is_empty() {
                return Err(format!(
                    "oidc provider {}: group {}: an owner is never scoped",
                    self.name, rule.group
                ));
            }
            crate::fleet::Selector::parse(&rule.scope).map_err(|e| {
                format!(
                    "oidc provider {}: group {}: scope: {e}",
                    self.name, rule.group
                )
            })?;
        }
        Ok(())
    }

    /// The first rule matching one of the user's groups.
    pub fn map_role(&self, groups: &[String]) -> Option<&RoleRule> {
        self.roles
            .iter()
            .find(|rule| groups.iter().any(|g| g == &rule.group))
    }
}

/// A configured provider, with its secret and cached discovery document.
pub struct Provider {
    pub config: ProviderConfig,
    client_secret: Option<Zeroizing<String>>,
    metadata: std::sync::Mutex<MetadataCache>,
}

/// Discovered metadata (endpoints and signing keys), and when discovery last failed.
#[derive(Default)]
struct MetadataCache {
    document: Option<(DateTime<Utc>, CoreProviderMetadata)>,
    failed_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.config.name)
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

/// All configured providers, and the HTTP client that talks to them.
#[derive(Debug)]
pub struct Sso {
    providers: Vec<Provider>,
    http: reqwest::Client,
    /// The externally visible base URL of this control plane (redirect URIs derive from it).
    public_url: std::sync::OnceLock<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error("no such sign-in provider")]
    UnknownProvider,
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    #[error("unknown, expired or already used sign-in (state)")]
    InvalidState,
    #[error("this sign-in was started in another browser")]
    WrongBrowser,
    #[error("the identity provider refused the sign-in: {0}")]
    ProviderDenied(String),
    #[error("the identity provider's answer was rejected: {0}")]
    Rejected(String),
    #[error("your account has no moltops role: ask an owner to map one of your groups")]
    NoRole,
    #[error("your account was disabled by an owner")]
    Disabled,
    #[error("another sign-in of the same person created the user first")]
    RaceLost,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// A client built from discovery: authorization endpoint known, token and userinfo endpoints
/// as the provider published them.
type Client = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

type HttpFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send>,
>;

async fn call(
    client: reqwest::Client,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let request = reqwest::Request::try_from(request).map_err(|e| HttpError(e.to_string()))?;
    let response = client
        .execute(request)
        .await
        .map_err(|e| HttpError(e.to_string()))?;
    let mut builder = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    // Provider documents are small; refuse anything absurd.
    let body = response
        .bytes()
        .await
        .map_err(|e| HttpError(e.to_string()))?;
    if body.len() > 1024 * 1024 {
        return Err(HttpError("response larger than 1 MiB".into()));
    }
    builder
        .body(body.to_vec())
        .map_err(|e| HttpError(e.to_string()))
}

impl Sso {
    /// Builds the registry; reads each provider's secret from its file or environment variable.
    pub fn new(configs: Vec<ProviderConfig>, public_url: Option<String>) -> Result<Self, String> {
        let mut providers = Vec::with_capacity(configs.len());
        for config in configs {
            config.validate()?;
            if providers
                .iter()
                .any(|p: &Provider| p.config.name == config.name)
            {
                return Err(format!("oidc provider {} is configured twice", config.name));
            }
            let env_name = format!(
                "MOLTOPS_OIDC_{}_CLIENT_SECRET",
                config.name.to_ascii_uppercase().replace('-', "_")
            );
            let client_secret = match (&config.client_secret_file, std::env::var(&env_name)) {
                (_, Ok(secret)) if !secret.is_empty() => Some(Zeroizing::new(secret)),
                (Some(path), _) => Some(Zeroizing::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| {
                            format!(
                                "oidc provider {}: client_secret_file {}: {e}",
                                config.name,
                                path.display()
                            )
                        })?
                        .trim()
                        .to_owned(),
                )),
                _ => None,
            };
            providers.push(Provider {
                config,
                client_secret,
                metadata: std::sync::Mutex::new(MetadataCache::default()),
            });
        }
        // The process-wide TLS provider (ring; main installs it too): idempotent.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            // Never follow redirects from the provider's endpoints (SSRF).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| format!("building the OIDC HTTP client: {e}"))?;
        let public = std::sync::OnceLock::new();
        if let Some(url) = public_url {
            let _ = public.set(url.trim_end_matches('/').to_owned());
        }
        Ok(Self {
            providers,
            http,
            public_url: public,
        })
    }

    /// Sets the public URL from the bound address when none was configured.
    pub fn default_public_url(&self, url: String) {
        let _ = self.public_url.set(url);
    }

    pub fn public_url(&self) -> &str {
        self.public_url.get().map_or("", String::as_str)
    }

    /// Cookies get `Secure` when the public URL is HTTPS.
    pub fn secure_cookies(&self) -> bool {
        self.public_url().starts_with("https://")
    }

    pub fn providers(&self) -> impl Iterator<Item = &ProviderConfig> {
        self.providers.iter().map(|p| &p.config)
    }

    pub fn provider(&self, name: &str) -> Result<&Provider, SsoError> {
        self.providers
            .iter()
            .find(|p| p.config.name == name)
            .ok_or(SsoError::UnknownProvider)
    }

    pub fn redirect_uri(&self, provider: &str) -> String {
        format!("{}/v1/auth/oidc/{provider}/callback", self.public_url())
    }

    /// The HTTP client handed to `openidconnect`: owned, so its futures are `Send + 'static`.
    fn http_client(
        &self,
    ) -> impl Fn(openidconnect::HttpRequest) -> HttpFuture + Send + Sync + use<> {
        let client = self.http.clone();
        move |request| Box::pin(call(client.clone(), request))
    }

    async fn metadata(
        &self,
        provider: &Provider,
        now: DateTime<Utc>,
    ) -> Result<CoreProviderMetadata, SsoError> {
        // The lock is never held across the network: concurrent sign-ins with a stale cache may
        // each fetch, which is harmless; a recent failure answers at once instead of queueing.
        {
            let cached = provider
                .metadata
                .lock()
                .map_err(|_| SsoError::Unavailable("metadata cache poisoned".into()))?;
            if let Some((fetched, metadata)) = &cached.document
                && now - *fetched < METADATA_TTL
                && now >= *fetched
            {
                return Ok(metadata.clone());
            }
            if let Some(failed) = cached.failed_at
                && now - failed < DISCOVERY_RETRY
                && now >= failed
            {
                return Err(SsoError::Unavailable(
                    "discovery failed moments ago; not retrying yet".into(),
                ));
            }
        }
        let issuer = IssuerUrl::new(provider.config.issuer.clone())
            .map_err(|e| SsoError::Unavailable(e.to_string()))?;
        let http = self.http_client();
        let fetched = CoreProviderMetadata::discover_async(issuer, &http).await;
        let mut cached = provider
            .metadata
            .lock()
            .map_err(|_| SsoError::Unavailable("metadata cache poisoned".into()))?;
        match fetched {
            Ok(metadata) => {
                cached.document = Some((now, metadata.clone()));
                cached.failed_at = None;
                Ok(metadata)
            }
            Err(e) => {
                tracing::warn!(provider = %provider.config.name, error = %error_chain(&e), "OIDC discovery failed");
                cached.failed_at = Some(now);
                Err(SsoError::Unavailable(format!("discovery failed: {e}")))
            }
        }
    }

    /// Forgets a provider's cached keys (after an ID token failed validation, the provider may
    /// have rotated them; the next sign-in fetches them again).
    fn invalidate(provider: &Provider) {
        if let Ok(mut cached) = provider.metadata.lock() {
            cached.document = None;
        }
    }

    /// The provider's OAuth client, from its (cached) discovery document, with our redirect URI.
    async fn client(&self, provider: &Provider, now: DateTime<Utc>) -> Result<Client, SsoError> {
        let metadata = self.metadata(provider, now).await?;
        let redirect = RedirectUrl::new(self.redirect_uri(&provider.config.name))
            .map_err(|e| SsoError::Unavailable(format!("redirect URI: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(provider.config.client_id.clone()),
            provider
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.to_string())),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a sign-in: records it and returns the provider's authorization URL and the binding
    /// cookie (name, value) to set in the browser.
    pub async fn begin(
        &self,
        pool: &PgPool,
        provider_name: &str,
        cli_login: Option<Uuid>,
        now: DateTime<Utc>,
        rng: &mut (dyn RngCore + Send),
    ) -> Result<(String, String, Zeroizing<String>), SsoError> {
        let provider = self.provider(provider_name)?;
        let client = self.client(provider, now).await?;
        // 32 random bytes, base64url: a valid PKCE verifier (43 characters).
        let verifier = random_b64(rng, 32);
        let state = random_b64(rng, 32);
        let nonce = random_b64(rng, 32);
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
            verifier.to_string(),
        ));
        let state_for_url = state.to_string();
        let nonce_for_url = nonce.to_string();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(state_for_url),
            move || Nonce::new(nonce_for_url),
        );
        for scope in &provider.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, _, _) = request.set_pkce_challenge(challenge).url();
        let id = Uuid::now_v7();
        sqlx::query!(
            "insert into oidc_logins (id, provider, state_hash, browser_hash, nonce, cli_login_id,
                                      created_at, expires_at)
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
            id,
            provider_name,
            hash_secret(&state),
            hash_secret(&verifier),
            nonce.as_str(),
            cli_login,
            now,
            now + LOGIN_TTL
        )
        .execute(pool)
        .await?;
        // Expired sign-ins are only clutter; drop them as we go.
        sqlx::query!(
            "delete from oidc_logins where expires_at < $1",
            now - LOGIN_TTL
        )
        .execute(pool)
        .await?;
        Ok((url.to_string(), binding_cookie_name(id), verifier))
    }

    /// Completes a sign-in from the provider's redirect. `cookie` looks up a request cookie.
    pub async fn complete(
        &self,
        pool: &PgPool,
        provider_name: &str,
        callback: &Callback,
        cookie: &(dyn Fn(&str) -> Option<String> + Sync),
        now: DateTime<Utc>,
    ) -> Result<SignedIn, SsoError> {
        let provider = self.provider(provider_name)?;
        let Some(state) = &callback.state else {
            return Err(SsoError::InvalidState);
        };
        // Consume the sign-in first: a replayed callback finds nothing.
        let login = sqlx::query!(
            "update oidc_logins set consumed_at = $3
             where state_hash = $1 and provider = $2 and consumed_at is null and expires_at > $3
             returning id, browser_hash, nonce, cli_login_id",
            hash_secret(state),
            provider_name,
            now
        )
        .fetch_optional(pool)
        .await?
        .ok_or(SsoError::InvalidState)?;
        // Only a sign-in we started may report the provider's error (and it is now used up).
        if let Some(error) = &callback.error {
            let error: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(SsoError::ProviderDenied(error));
        }
        let Some(code) = &callback.code else {
            return Err(SsoError::InvalidState);
        };
        let verifier = cookie(&binding_cookie_name(login.id)).ok_or(SsoError::WrongBrowser)?;
        if !crate::pairing::constant_time_eq(&hash_secret(&verifier), &login.browser_hash) {
            return Err(SsoError::WrongBrowser);
        }
        let client = self.client(provider, now).await?;
        let http = self.http_client();
        let response = client
            .exchange_code(AuthorizationCode::new(code.clone()))
            .map_err(|e| SsoError::Unavailable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(&http)
            .await
            .map_err(|e| match e {
                openidconnect::RequestTokenError::ServerResponse(answer) => {
                    SsoError::ProviderDenied(truncate(&answer.to_string(), 200))
                }
                other => SsoError::Unavailable(format!("token endpoint: {}", error_chain(&other))),
            })?;
        let id_token = response
            .id_token()
            .ok_or_else(|| SsoError::Rejected("no ID token in the token response".into()))?;
        let verifier = client.id_token_verifier().set_time_fn(move || now);
        let nonce = Nonce::new(login.nonce);
        let claims = id_token.claims(&verifier, &nonce).map_err(|e| {
            Self::invalidate(provider);
            SsoError::Rejected(format!("ID token: {e}"))
        })?;
        // The signature is verified; read the extra claims (groups) from the same payload.
        let payload = decode_payload(&id_token.to_string())
            .ok_or_else(|| SsoError::Rejected("ID token payload is not JSON".into()))?;
        let groups = groups_from(&payload, &provider.config.groups_claim);
        let identity = Identity {
            issuer: claims.issuer().to_string(),
            subject: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()).unwrap_or_default(),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.to_string())
                .unwrap_or_default(),
            groups,
        };
        let user_id = match record_user(pool, &provider.config, &identity, now).await {
            Err(SsoError::RaceLost) => record_user(pool, &provider.config, &identity, now).await?,
            other => other?,
        };
        Ok(SignedIn {
            login_id: login.id,
            user_id,
            cli_login_id: login.cli_login_id,
            identity,
        })
    }
}

/// The callback's query string.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Who signed in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The sign-in (its binding cookie can be cleared).
    pub login_id: Uuid,
    pub user_id: Uuid,
    pub cli_login_id: Option<Uuid>,
    pub identity: Identity,
}

pub fn binding_cookie_name(login_id: Uuid) -> String {
    format!("{BINDING_COOKIE_PREFIX}{}", login_id.simple())
}

fn random_b64(rng: &mut (dyn RngCore + Send), bytes: usize) -> Zeroizing<String> {
    let mut raw = Zeroizing::new(vec![0u8; bytes]);
    rng.fill_bytes(&mut raw);
    Zeroizing::new(URL_SAFE_NO_PAD.encode(raw.as_slice()))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn decode_payload(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A groups claim may be an array of strings or one string.
fn groups_from(payload: &Value, claim: &str) -> Vec<String> {
    match payload.get(claim) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .take(1000)
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// Creates or updates the user with the role the mapping gives now. No role: the sign-in is
/// refused and any sessions the user still has end; a disabled user stays refused.
async fn record_user(
    pool: &PgPool,
    config: &ProviderConfig,
    identity: &Identity,
    now: DateTime<Utc>,
) -> Result<Uuid, SsoError> {
    let mut tx = pool.begin().await?;
    let mut rule = config.map_role(&identity.groups).cloned();
    if let Some(r) = &rule
        && crate::roles::ensure_exists(&mut tx, &r.role).await.is_err()
    {
        tracing::warn!(provider = %config.name, role = %r.role, "OIDC role mapping names a role that does not exist");
        rule = None;
    }
    let existing = sqlx::query!(
        "select id, role, scope, disabled_at from sso_users where issuer = $1 and subject = $2 for update",
        identity.issuer,
        identity.subject
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(rule) = rule else {
        if let Some(user) = &existing {
            sqlx::query!(
                "update sso_users set role = null, groups = $2, last_login_at = $3 where id = $1",
                user.id,
                json!(identity.groups),
                now
            )
            .execute(&mut *tx)
            .await?;
            let ended = sqlx::query!(
                "update device_sessions set revoked_at = $2 where sso_user_id = $1 and revoked_at is null",
                user.id,
                now
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
            audit::record(
                &mut tx,
                now,
                AuditEvent {
                    actor: &Actor::System { what: "sso" },
                    action: "sso.role_lost",
                    target_kind: "user",
                    target_id: user.id.to_string(),
                    reason: Some("the identity provider's groups no longer map to a role"),
                    outcome: Outcome::Success,
                    detail: json!({ "sessions_ended": ended, "groups": identity.groups }),
                },
            )
            .await?;
            tx.commit().await?;
        }
        return Err(SsoError::NoRole);
    };
    let groups = json!(identity.groups);
    let id = match existing {
        Some(user) => {
            if user.disabled_at.is_some() {
                return Err(SsoError::Disabled);
            }
            sqlx::query!(
                "update sso_users set email = $2, name = $3, groups = $4, role = $5, scope = $6,
                                      last_login_at = $7
                 where id = $1",
                user.id,
                identity.email,
                identity.name,
                groups,
                rule.role.as_str(),
                rule.scope,
                now
            )
            .execute(&mut *tx)
            .await?;
            if user.role.as_deref() != Some(rule.role.as_str()) || user.scope != rule.scope {
                audit::record(
                    &mut tx,
                    now,
                    AuditEvent {
                        actor: &Actor::System { what: "sso" },
                        action: "user.role_change",
                        target_kind: "user",
                        target_id: user.id.to_string(),
                        reason: Some("group mapping at sign-in"),
                        outcome: Outcome::Success,
                        detail: json!({
                            "before": { "role": user.role, "scope": user.scope },
                            "after": { "role": rule.role.as_str(), "scope": rule.scope },
                        }),
                    },
                )
                .await?;
            }
            user.id
        }
        None => {
            // Two first sign-ins of one person at once: the loser retries (and finds the row).
            let id = sqlx::query_scalar!(
                "insert into sso_users (id, provider, issuer, subject, email, name, groups, role, scope,
                                        created_at, last_login_at)
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
                 on conflict (issuer, subject) do nothing returning id",
                Uuid::now_v7(),
                config.name,
                identity.issuer,
                identity.subject,
                identity.email,
                identity.name,
                groups,
                rule.role.as_str(),
                rule.scope,
                now
            )
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(SsoError::RaceLost)?;
            audit::record(
                &mut tx,
                now,
                AuditEvent {
                    actor: &Actor::System { what: "sso" },
                    action: "user.create",
                    target_kind: "user",
                    target_id: id.to_string(),
                    reason: Some("first sign-in through the identity provider"),
                    outcome: Outcome::Success,
                    detail: json!({
                        "provider": config.name,
                        "issuer": identity.issuer,
                        "subject": identity.subject,
                        "role": rule.role.as_str(),
                        "scope": rule.scope,
                    }),
                },
            )
            .await?;
            id
        }
    };
    tx.commit().await?;
    Ok(id)
}

/// Shared handle.
pub type SharedSso = Arc<Sso>;

impl Sso {
    /// Applies the configured mappings to every SSO user's last known groups (at start-up, so a
    /// mapping changed in the config takes effect now, not at each user's next sign-in). A user
    /// left without a role, or whose provider is no longer configured, loses every session.
    pub async fn remap_all(&self, pool: &PgPool, now: DateTime<Utc>) -> Result<u64, SsoError> {
        let users = sqlx::query!(
            "select id, provider, groups, role, scope from sso_users where disabled_at is null"
        )
        .fetch_all(pool)
        .await?;
        let mut changed = 0;
        for user in users {
            let groups: Vec<String> = serde_json::from_value(user.groups).unwrap_or_default();
            let rule = self
                .providers
                .iter()
                .find(|p| p.config.name == user.provider)
                .and_then(|p| p.config.map_role(&groups));
            let (role, scope) = match rule {
                Some(rule) => (Some(rule.role.as_str().to_owned()), rule.scope.clone()),
                None => (None, String::new()),
            };
            if role == user.role && (role.is_none() || scope == user.scope) {
                continue;
            }
            let mut tx = pool.begin().await?;
            sqlx::query!(
                "update sso_users set role = $2, scope = $3 where id = $1",
                user.id,
                role,
                scope
            )
            .execute(&mut *tx)
            .await?;
            let ended = if role.is_none() {
                sqlx::query!(
                    "update device_sessions set revoked_at = $2 where sso_user_id = $1 and revoked_at is null",
                    user.id,
                    now
                )
                .execute(&mut *tx)
                .await?
                .rows_affected()
            } else {
                0
            };
            audit::record(
                &mut tx,
                now,
                AuditEvent {
                    actor: &Actor::System { what: "sso" },
                    action: "user.role_change",
                    target_kind: "user",
                    target_id: user.id.to_string(),
                    reason: Some("the configured group mapping changed"),
                    outcome: Outcome::Success,
                    detail: json!({
                        "before": { "role": user.role, "scope": user.scope },
                        "after": { "role": role, "scope": scope },
                        "sessions_ended": ended,
                    }),
                },
            )
            .await?;
            tx.commit().await?;
            changed += 1;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(roles: Vec<RoleRule>) -> ProviderConfig {
        ProviderConfig {
            name: "corp".into(),
            display_name: String::new(),
            issuer: "https://idp.example.test".into(),
            client_id: "moltops".into(),
            client_secret_file: None,
            scopes: default_scopes(),
            groups_claim: default_groups_claim(),
            roles,
        }
    }

    fn rule(group: &str, role: Role, scope: &str) -> RoleRule {
        RoleRule {
            group: group.into(),
            role,
            scope: scope.into(),
        }
    }

    #[test]
    fn first_matching_rule_wins_and_no_match_means_no_role() {
        let config = provider(vec![
            rule("owners", Role::Owner, ""),
            rule("staging", Role::Admin, "env=staging"),
            rule("everyone", Role::Viewer, ""),
        ]);
        let groups = |g: &[&str]| g.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            config.map_role(&groups(&["everyone", "staging"])),
            Some(&rule("staging", Role::Admin, "env=staging"))
        );
        assert_eq!(
            config
                .map_role(&groups(&["owners"]))
                .map(|r| r.role.clone()),
            Some(Role::Owner)
        );
        assert_eq!(config.map_role(&groups(&["contractors"])), None);
        assert_eq!(config.map_role(&[]), None);
    }

    #[test]
    fn configuration_mistakes_are_named() {
        let mut bad = provider(vec![]);
        assert!(bad.validate().unwrap_err().contains("no [[oidc.roles]]"));
        bad.roles = vec![rule("owners", Role::Owner, "env=prod")];
        assert!(bad.validate().unwrap_err().contains("never scoped"));
        bad.roles = vec![rule("x", Role::Admin, "a b")];
        assert!(bad.validate().is_err());
        bad.roles = vec![rule("x", Role::Admin, "")];
        bad.name = "Corp SSO".into();
        assert!(bad.validate().unwrap_err().contains("a-z"));
    }

    #[test]
    fn groups_claim_may_be_a_list_or_one_string() {
        assert_eq!(
            groups_from(&json!({"groups": ["a", "b", 3]}), "groups"),
            vec!["a", "b"]
        );
        assert_eq!(groups_from(&json!({"roles": "ops"}), "roles"), vec!["ops"]);
        assert!(groups_from(&json!({}), "groups").is_empty());
    }
}

/// Device-style sign-in for the CLI.
pub mod cli {
    use super::*;

    /// How long a CLI sign-in may take.
    pub const CLI_LOGIN_TTL: Duration = Duration::minutes(10);
    /// How often the CLI is told to poll.
    pub const POLL_INTERVAL_SECONDS: i64 = 3;
    /// Pending CLI sign-ins one client address may have at once.
    pub const MAX_PENDING_PER_CLIENT: i64 = 20;
    /// Pending CLI sign-ins allowed at once (an anonymous flood cannot grow the table unbounded).
    pub const MAX_PENDING: i64 = 10_000;
    pub const POLL_PREFIX: &str = "mcp_";

    pub struct Started {
        pub id: Uuid,
        pub user_code: String,
        pub poll_token: Zeroizing<String>,
        pub expires_at: DateTime<Utc>,
    }

    #[derive(Debug, thiserror::Error)]
    pub enum CliLoginError {
        #[error("too many pending sign-ins; try again later")]
        TooManyPending,
        #[error("unknown or already used sign-in")]
        Unknown,
        #[error("the sign-in expired; start again")]
        Expired,
        #[error("unknown sign-in, or the code does not match the one your terminal shows")]
        WrongCode,
        #[error("database: {0}")]
        Database(#[from] sqlx::Error),
    }

    pub async fn start(
        pool: &PgPool,
        provider: &str,
        client_addr: &str,
        now: DateTime<Utc>,
        rng: &mut (dyn RngCore + Send),
    ) -> Result<Started, CliLoginError> {
        let pending: i64 = sqlx::query_scalar!(
            r#"select count(*) as "n!" from cli_logins where expires_at > $1 and consumed_at is null"#,
            now
        )
        .fetch_one(pool)
        .await?;
        let mine: i64 = sqlx::query_scalar!(
            r#"select count(*) as "n!" from cli_logins
               where client_addr = $1 and expires_at > $2 and consumed_at is null"#,
            client_addr,
            now
        )
        .fetch_one(pool)
        .await?;
        if pending >= MAX_PENDING || mine >= MAX_PENDING_PER_CLIENT {
            return Err(CliLoginError::TooManyPending);
        }
        sqlx::query!(
            "delete from cli_logins where expires_at < $1",
            now - CLI_LOGIN_TTL
        )
        .execute(pool)
        .await?;
        let id = Uuid::now_v7();
        let user_code = crate::pairing::generate_code(rng);
        let poll_token = crate::crypto::generate_secret(POLL_PREFIX, 32, rng);
        let expires_at = now + CLI_LOGIN_TTL;
        let mut tx = pool.begin().await?;
        sqlx::query!(
            "insert into cli_logins (id, provider, poll_hash, user_code, client_addr, created_at, expires_at)
             values ($1, $2, $3, $4, $5, $6, $7)",
            id,
            provider,
            hash_secret(&poll_token),
            user_code,
            client_addr,
            now,
            expires_at
        )
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            now,
            AuditEvent {
                actor: &Actor::Anonymous {
                    client: client_addr.to_owned(),
                },
                action: "sso.cli_start",
                target_kind: "cli_login",
                target_id: id.to_string(),
                reason: None,
                outcome: Outcome::Success,
                detail: json!({ "provider": provider }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Started {
            id,
            user_code,
            poll_token,
            expires_at,
        })
    }

    /// The sign-in the browser is about to start for, if still pending and for this provider.
    pub async fn pending(
        pool: &PgPool,
        id: Uuid,
        provider: &str,
        now: DateTime<Utc>,
    ) -> Result<(), CliLoginError> {
        let row = sqlx::query!(
            "select provider, expires_at, sso_user_id from cli_logins where id = $1 and consumed_at is null",
            id
        )
        .fetch_optional(pool)
        .await?
        .ok_or(CliLoginError::Unknown)?;
        if row.provider != provider || row.sso_user_id.is_some() {
            return Err(CliLoginError::Unknown);
        }
        if row.expires_at <= now {
            return Err(CliLoginError::Expired);
        }
        Ok(())
    }

    /// Where and when a CLI sign-in was started, for the confirmation page.
    pub struct Origin {
        pub client_addr: String,
        pub created_at: DateTime<Utc>,
    }

    /// After the browser signed in: remembers who, and returns where the sign-in was started and
    /// the secret the confirmation form carries. The code is not returned: the person must type
    /// the one their terminal shows.
    pub async fn signed_in(
        pool: &PgPool,
        id: Uuid,
        user_id: Uuid,
        now: DateTime<Utc>,
        rng: &mut (dyn RngCore + Send),
    ) -> Result<(Origin, Zeroizing<String>), CliLoginError> {
        let approval = crate::crypto::generate_secret("", 32, rng);
        let origin = sqlx::query_as!(
            Origin,
            "update cli_logins set sso_user_id = $2, approve_hash = $3
             where id = $1 and sso_user_id is null and consumed_at is null and expires_at > $4
             returning client_addr, created_at",
            id,
            user_id,
            hash_secret(&approval),
            now
        )
        .fetch_optional(pool)
        .await?
        .ok_or(CliLoginError::Expired)?;
        Ok((origin, approval))
    }

    /// The person typed the code their terminal shows (it must match) and confirmed.
    pub async fn approve(
        pool: &PgPool,
        id: Uuid,
        approval: &str,
        typed_code: &str,
        now: DateTime<Utc>,
    ) -> Result<(), CliLoginError> {
        let code = crate::pairing::normalize_code(typed_code).ok_or(CliLoginError::WrongCode)?;
        let mut tx = pool.begin().await?;
        let updated = sqlx::query!(
            "update cli_logins set approved_at = $3
             where id = $1 and approve_hash = $2 and approved_at is null and consumed_at is null
                   and expires_at > $3 and replace(user_code, '-', '') = $4
             returning sso_user_id",
            id,
            hash_secret(approval),
            now,
            code
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(CliLoginError::WrongCode)?;
        audit::record(
            &mut tx,
            now,
            AuditEvent {
                actor: &Actor::SsoUser {
                    id: updated.sso_user_id.unwrap_or_default(),
                    name: String::new(),
                },
                action: "sso.cli_approve",
                target_kind: "cli_login",
                target_id: id.to_string(),
                reason: None,
                outcome: Outcome::Success,
                detail: json!({}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub enum Poll {
        Pending,
        /// Approved: the user to mint tokens for (the sign-in is now consumed).
        Approved(Uuid),
    }

    pub async fn poll(
        pool: &PgPool,
        poll_token: &str,
        now: DateTime<Utc>,
    ) -> Result<Poll, CliLoginError> {
        if !poll_token.starts_with(POLL_PREFIX) || poll_token.len() > 128 {
            return Err(CliLoginError::Unknown);
        }
        let mut tx = pool.begin().await?;
        let row = sqlx::query!(
            "select id, expires_at, sso_user_id, approved_at from cli_logins
             where poll_hash = $1 and consumed_at is null for update",
            hash_secret(poll_token)
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(CliLoginError::Unknown)?;
        if row.expires_at <= now {
            return Err(CliLoginError::Expired);
        }
        match (row.approved_at, row.sso_user_id) {
            (Some(_), Some(user)) => {
                sqlx::query!(
                    "update cli_logins set consumed_at = $2 where id = $1",
                    row.id,
                    now
                )
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Poll::Approved(user))
            }
            _ => Ok(Poll::Pending),
        }
    }
}
