//! Start-up and shutdown of one replica: database, migrations, key-encryption key, CA, then the
//! REST and gRPC servers on already-bound listeners, drained on shutdown with a deadline.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Duration as ChronoDuration;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ca::CertificateAuthority;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::crypto::KeyEncryptionKey;
use crate::fleet::Liveness;
use crate::hub::Hub;

/// Settings handlers read at run time.
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub liveness: Liveness,
    pub agent_certificate_lifetime: ChronoDuration,
    pub grpc_advertise: String,
    pub grpc_server_names: Vec<String>,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The web admin's built files, served at `/`.
    pub web_dir: Option<std::path::PathBuf>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        let heartbeat = config.heartbeat_interval_seconds;
        Self {
            heartbeat_interval: Duration::from_secs(heartbeat),
            // Three missed heartbeats make a node offline.
            liveness: Liveness {
                window: ChronoDuration::seconds(i64::try_from(heartbeat * 3).unwrap_or(45)),
            },
            agent_certificate_lifetime: ChronoDuration::seconds(
                i64::try_from(config.agent_certificate_ttl_seconds).unwrap_or(86_400),
            ),
            grpc_advertise: config.grpc_advertise.clone(),
            grpc_server_names: config.grpc_server_names.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            web_dir: config.web_dir.clone(),
        }
    }
}

/// Everything a handler needs: cheap clones of shared handles.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    pub ca: Arc<CertificateAuthority>,
    pub hub: Hub,
    pub settings: Arc<Settings>,
    pub limits: Arc<Limits>,
    pub authz: Arc<crate::rbac::Authz>,
    /// Configured OpenID providers.
    pub sso: Arc<crate::oidc::Sso>,
    /// Signs audit checkpoints.
    pub signer: Arc<crate::audit_keys::Signer>,
    /// Cancelled once this replica starts shutting down, so `/ready` answers 503 `draining`. Only
    /// read by handlers; [`run`] sets it to its shutdown signal.
    pub draining: CancellationToken,
}

/// Rate limits of the unauthenticated sign-in surface (`/pair/*`, `/v1/auth/refresh`).
#[derive(Debug)]
pub struct Limits {
    /// Per client address.
    pub per_client: crate::ratelimit::RateLimiter,
    /// All clients together, on this replica: pairing.
    pub global: crate::ratelimit::RateLimiter,
    /// All clients together, on this replica: session refreshes (every device refreshes every
    /// 15 minutes, so this budget is larger).
    pub global_refresh: crate::ratelimit::RateLimiter,
    /// Single sign-on, per client (generous: an office behind one NAT signs in through it).
    pub per_client_sso: crate::ratelimit::RateLimiter,
    /// Single sign-on, all clients together on this replica: apart from the refresh budget, so
    /// an SSO flood cannot starve the fleet's session refreshes.
    pub global_sso: crate::ratelimit::RateLimiter,
    /// Backoff after repeated failed sign-ins from one client.
    pub lockout: crate::ratelimit::Lockout,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_client: crate::ratelimit::RateLimiter::new(10, Duration::from_secs(60)),
            global: crate::ratelimit::RateLimiter::new(120, Duration::from_secs(60)),
            global_refresh: crate::ratelimit::RateLimiter::new(1200, Duration::from_secs(60)),
            per_client_sso: crate::ratelimit::RateLimiter::new(120, Duration::from_secs(60)),
            global_sso: crate::ratelimit::RateLimiter::new(1200, Duration::from_secs(60)),
            lockout: crate::ratelimit::Lockout::new(
                5,
                chrono::Duration::minutes(15),
                chrono::Duration::minutes(60),
            ),
        }
    }
}

/// Loads the key-encryption key: `MOLTOPS_MASTER_KEY` if set, else `<data_dir>/master.key`.
pub fn load_kek(master_key: Option<&str>, config: &Config) -> anyhow::Result<KeyEncryptionKey> {
    match master_key {
        Some(value) => Ok(KeyEncryptionKey::from_base64(value)?),
        None => {
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!("creating data directory {}", config.data_dir.display())
            })?;
            let path = config.data_dir.join("master.key");
            Ok(KeyEncryptionKey::load_or_create_file(
                &path,
                &mut rand::rng(),
            )?)
        }
    }
}

/// Connects, migrates and loads the CA.
pub async fn prepare(
    config: &Config,
    kek: &KeyEncryptionKey,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<AppState> {
    let pool = crate::db::connect(&config.database_url, config.database_max_connections)
        .await
        .context("connecting to Postgres (check MOLTOPS_DATABASE_URL)")?;
    crate::db::migrate(&pool)
        .await
        .context("running database migrations")?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let ca = CertificateAuthority::load_or_create(&pool, kek, clock.now(), &mut rng)
        .await
        .context("loading the certificate authority")?;
    // First boot: no Owner yet. The code goes to this console only, never over HTTP.
    if let Some(code) = crate::pairing::setup_code_if_ownerless(&pool, clock.now(), &mut rng)
        .await
        .context("checking for an owner")?
    {
        eprintln!(
            "\nmoltops: no owner exists yet. Setup code (valid {} minutes, single use): {code}\n\
             moltops: pair a device with it: POST /pair/confirm {{\"pairing_code\": \"{code}\", \"device_name\": \"…\"}}\n",
            crate::pairing::SETUP_TTL.num_minutes()
        );
    }
    let sso = Arc::new(
        crate::oidc::Sso::new(config.oidc.clone(), config.public_url.clone())
            .map_err(anyhow::Error::msg)?,
    );
    let remapped = sso
        .remap_all(&pool, clock.now())
        .await
        .context("applying the SSO group mappings")?;
    if remapped > 0 {
        tracing::info!(
            users = remapped,
            "SSO users' roles changed with the configured mapping"
        );
    }
    let signer = crate::audit_keys::Signer::load_or_create(&pool, kek, clock.now(), &mut rng)
        .await
        .context("loading the audit signing key")?;
    Ok(AppState {
        signer,
        sso,
        clock,
        ca,
        hub: Hub::default(),
        settings: Arc::new(Settings::from_config(config)),
        limits: Arc::new(Limits::default()),
        authz: crate::rbac::Authz::load(&pool)
            .await
            .context("loading the authorization policy")?,
        pool,
        draining: CancellationToken::new(),
    })
}

/// Runs both servers until `shutdown`, then drains for at most `drain_seconds`: readiness turns
/// 503 at once, the listeners stop accepting, agent streams are closed (their agents reconnect,
/// to another replica behind the Service), and in-flight requests may finish until the deadline.
pub async fn run(
    config: &Config,
    state: AppState,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    let mut state = state;
    // Readiness follows the shutdown signal: `/ready` answers 503 from the first moment of a drain.
    state.draining = shutdown.clone();
    // An address derived from a configured port 0 names the port actually bound (the enroll
    // command printed for operators must work).
    if let Some(host) = state.settings.grpc_advertise.strip_suffix(":0") {
        let mut settings = (*state.settings).clone();
        settings.grpc_advertise = format!("{host}:{}", grpc_addr.port());
        state.settings = Arc::new(settings);
    }
    // Without a configured public URL, redirect URIs use the address we are bound to.
    state.sso.default_public_url(format!(
        "{}://{http_addr}",
        if config.http_tls.is_some() {
            "https"
        } else {
            "http"
        }
    ));
    let listener_task = tokio::spawn(crate::hub::listen(
        state.pool.clone(),
        state.hub.clone(),
        state.authz.clone(),
        shutdown.clone(),
    ));
    let forward_task = tokio::spawn(crate::audit_forward::run(
        state.pool.clone(),
        config.audit_forward.clone(),
        shutdown.clone(),
    ));
    let checkpoint_task = tokio::spawn(checkpoints(
        state.clone(),
        Duration::from_secs(config.audit_checkpoint_interval_seconds),
        shutdown.clone(),
    ));
    let grpc_task = tokio::spawn(crate::grpc::serve(
        grpc_listener,
        state.clone(),
        shutdown.clone(),
    ));
    let app = crate::http::router(state.clone());
    let http_shutdown = shutdown.clone();
    let http_task = match &config.http_tls {
        None => tokio::spawn(async move {
            axum::serve(
                http_listener,
                app.into_make_service_with_connect_info::<crate::http_tls::ClientAddr>(),
            )
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
            .map_err(anyhow::Error::from)
        }),
        Some((cert, key)) => {
            let tls = crate::http_tls::server_config(cert, key)?;
            let listener = crate::http_tls::TlsListener::new(http_listener, tls, shutdown.clone());
            tokio::spawn(async move {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<crate::http_tls::ClientAddr>(),
                )
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await
                .map_err(anyhow::Error::from)
            })
        }
    };
    tracing::info!(
        http = %http_addr,
        grpc = %grpc_addr,
        https = config.http_tls.is_some(),
        ca_pin = %state.ca.pin(),
        "moltops-server ready"
    );
    shutdown.cancelled().await;
    let drain_deadline = Duration::from_secs(config.drain_seconds);
    tracing::info!(
        deadline_seconds = config.drain_seconds,
        "shutting down: not ready any more, draining connections"
    );
    let drain_started = tokio::time::Instant::now();
    let drain = async {
        let (http, grpc, _, _, _) = tokio::join!(
            http_task,
            grpc_task,
            listener_task,
            checkpoint_task,
            forward_task
        );
        http??;
        grpc??;
        anyhow::Ok(())
    };
    let drained = tokio::time::timeout(drain_deadline, drain).await;
    let took_ms = u64::try_from(drain_started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match drained {
        Ok(result) => {
            tracing::info!(took_ms, "drained within the deadline");
            result
        }
        Err(_) => {
            tracing::warn!(
                took_ms,
                deadline_seconds = config.drain_seconds,
                "drain deadline passed; exiting with connections still open"
            );
            Ok(())
        }
    }
}

/// Housekeeping every `interval`: expires overdue undelivered commands, and signs the audit
/// chain's head (if it moved), so a truncation or rewrite is detectable against the last
/// checkpoint kept elsewhere. Any replica may do both; the head only gets one checkpoint.
async fn checkpoints(state: AppState, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(e) = expire(&state).await {
            tracing::warn!(error = %e, "could not expire overdue commands");
        }
        match crate::audit_keys::checkpoint(&state.pool, &state.signer, state.clock.now()).await {
            Ok(Some(cp)) => tracing::debug!(seq = cp.seq, "signed an audit checkpoint"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "could not sign an audit checkpoint"),
        }
    }
}

/// Expires overdue undelivered commands, each with its audit row.
pub async fn expire(state: &AppState) -> Result<usize, sqlx::Error> {
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    let expired = crate::jobs::expire_commands(&mut tx, now).await?;
    for (command_id, node_id) in &expired {
        crate::audit::record(
            &mut tx,
            now,
            crate::audit::AuditEvent {
                actor: &crate::auth::Actor::System {
                    what: "command-deadline",
                },
                action: "command.expire",
                target_kind: "command",
                target_id: command_id.to_string(),
                reason: Some(crate::jobs::EXPIRED),
                outcome: crate::audit::Outcome::Failure,
                detail: serde_json::json!({ "node_id": node_id }),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(expired.len())
}

/// The default clock.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}
