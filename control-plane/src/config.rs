//! Configuration, parsed once at start into [`Config`]: flags override environment variables
//! (`MOLTOPS_*`, read by clap so tests can pass them explicitly), which override the TOML file,
//! which overrides defaults. Unknown keys in the file are an error that names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (default: ./moltops.toml if it exists).
    #[arg(long, env = "MOLTOPS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Postgres URL, e.g. postgres://moltops@db/moltops.
    #[arg(long, env = "MOLTOPS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory for the key file (when MOLTOPS_MASTER_KEY is not set).
    #[arg(long, env = "MOLTOPS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// REST API and web admin address (default 127.0.0.1:7337).
    #[arg(long, env = "MOLTOPS_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Agent gRPC (mTLS) address (default 127.0.0.1:7338).
    #[arg(long, env = "MOLTOPS_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// host:port agents use to reach the gRPC port; printed in enroll commands.
    #[arg(long, env = "MOLTOPS_GRPC_ADVERTISE")]
    pub grpc_advertise: Option<String>,
    /// DNS names / IPs in the gRPC server certificate (comma-separated).
    #[arg(long, env = "MOLTOPS_GRPC_SERVER_NAMES", value_delimiter = ',')]
    pub grpc_server_names: Option<Vec<String>>,
    /// PEM certificate chain for HTTPS on the REST port.
    #[arg(long, env = "MOLTOPS_HTTP_TLS_CERT")]
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS on the REST port.
    #[arg(long, env = "MOLTOPS_HTTP_TLS_KEY")]
    pub http_tls_key: Option<PathBuf>,
    /// How often agents send heartbeats; a node is offline after three missed ones.
    #[arg(long, env = "MOLTOPS_HEARTBEAT_INTERVAL_SECONDS")]
    pub heartbeat_interval_seconds: Option<u64>,
    /// Lifetime of agent client certificates (renewed at two thirds).
    #[arg(long, env = "MOLTOPS_AGENT_CERTIFICATE_TTL_SECONDS")]
    pub agent_certificate_ttl_seconds: Option<u64>,
    /// Log format: text or json.
    #[arg(long, env = "MOLTOPS_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Maximum Postgres connections of this replica.
    #[arg(long, env = "MOLTOPS_DATABASE_MAX_CONNECTIONS")]
    pub database_max_connections: Option<u32>,
    /// Reverse proxies whose X-Forwarded-For is believed (comma-separated IPs).
    #[arg(long, env = "MOLTOPS_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<std::net::IpAddr>>,
    /// The URL browsers reach this control plane at, e.g. https://moltops.example.com.
    #[arg(long, env = "MOLTOPS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How often to sign a checkpoint of the audit chain's head (default 300).
    #[arg(long, env = "MOLTOPS_AUDIT_CHECKPOINT_INTERVAL_SECONDS")]
    pub audit_checkpoint_interval_seconds: Option<u64>,
    /// After SIGTERM/SIGINT, how long open requests may take to finish before the process exits
    /// anyway (default 10).
    #[arg(long, env = "MOLTOPS_DRAIN_SECONDS")]
    pub drain_seconds: Option<u64>,
    /// The built web admin (a directory with index.html), served at `/`. Default: the first of
    /// `<binary dir>/../share/moltops/web` and `<binary dir>/../../web-admin/dist` that exists.
    #[arg(long, env = "MOLTOPS_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The file form; every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub database_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub http_addr: Option<SocketAddr>,
    pub grpc_addr: Option<SocketAddr>,
    pub grpc_advertise: Option<String>,
    pub grpc_server_names: Option<Vec<String>>,
    pub http_tls_cert: Option<PathBuf>,
    pub http_tls_key: Option<PathBuf>,
    pub heartbeat_interval_seconds: Option<u64>,
    pub agent_certificate_ttl_seconds: Option<u64>,
    pub log_format: Option<LogFormat>,
    pub database_max_connections: Option<u32>,
    pub trusted_proxies: Option<Vec<std::net::IpAddr>>,
    pub public_url: Option<String>,
    pub audit_checkpoint_interval_seconds: Option<u64>,
    pub drain_seconds: Option<u64>,
    pub web_dir: Option<PathBuf>,
    /// `[audit_forward]`: ship the audit log to syslog (TCP) and/or a webhook.
    #[serde(default)]
    pub audit_forward: Option<crate::audit_forward::ForwardConfig>,
    /// `[[oidc]]` tables: OpenID providers for single sign-on.
    #[serde(default)]
    pub oidc: Vec<crate::oidc::ProviderConfig>,
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub grpc_advertise: String,
    pub grpc_server_names: Vec<String>,
    pub http_tls: Option<(PathBuf, PathBuf)>,
    pub heartbeat_interval_seconds: u64,
    pub agent_certificate_ttl_seconds: u64,
    pub log_format: LogFormat,
    pub database_max_connections: u32,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The URL browsers reach this control plane at (redirect URIs derive from it); default:
    /// the bound HTTP address.
    pub public_url: Option<String>,
    pub oidc: Vec<crate::oidc::ProviderConfig>,
    /// How often the audit chain's head is signed.
    pub audit_checkpoint_interval_seconds: u64,
    /// The drain deadline after SIGTERM/SIGINT: keep it below Kubernetes'
    /// `terminationGracePeriodSeconds` (minus any preStop sleep).
    pub drain_seconds: u64,
    pub audit_forward: crate::audit_forward::ForwardConfig,
    /// The web admin's files; none: `/` says it is not built.
    pub web_dir: Option<PathBuf>,
}

/// Where the web admin is, if nowhere was configured: next to an installed binary, or in the
/// source tree the binary was built in.
fn default_web_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?;
    [
        bin.join("../share/moltops/web"),
        bin.join("../../web-admin/dist"),
    ]
    .into_iter()
    .find(|d| d.join("index.html").is_file())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl ServeArgs {
    /// Just the database settings, for the `admin` commands.
    pub fn database(&self) -> Result<(String, u32), ConfigError> {
        let file = self.file()?;
        let url = self
            .database_url
            .clone()
            .or(file.database_url)
            .ok_or_else(|| {
                ConfigError::Invalid(
                    "database_url is required (MOLTOPS_DATABASE_URL or --database-url)".into(),
                )
            })?;
        Ok((url, 2))
    }

    fn file(&self) -> Result<FileConfig, ConfigError> {
        let path = match &self.config {
            Some(p) => p.clone(),
            None if Path::new("moltops.toml").exists() => PathBuf::from("moltops.toml"),
            None => return Ok(FileConfig::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let file = self.file()?;
        let database_url = self
            .database_url
            .clone()
            .or(file.database_url)
            .ok_or_else(|| {
                ConfigError::Invalid(
                    "database_url is required (MOLTOPS_DATABASE_URL or --database-url)".into(),
                )
            })?;
        let http_addr = self
            .http_addr
            .or(file.http_addr)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7337)));
        let grpc_addr = self
            .grpc_addr
            .or(file.grpc_addr)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7338)));
        let cert = self.http_tls_cert.clone().or(file.http_tls_cert);
        let key = self.http_tls_key.clone().or(file.http_tls_key);
        let http_tls = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "http_tls_cert and http_tls_key must be set together".into(),
                ));
            }
        };
        if !http_addr.ip().is_loopback() && http_tls.is_none() {
            return Err(ConfigError::Invalid(format!(
                "refusing to serve the REST API on non-loopback address {http_addr} without TLS: \
                 set http_tls_cert and http_tls_key (MOLTOPS_HTTP_TLS_CERT / MOLTOPS_HTTP_TLS_KEY), \
                 or bind a loopback address"
            )));
        }
        let grpc_server_names = self
            .grpc_server_names
            .clone()
            .or(file.grpc_server_names)
            .unwrap_or_else(|| default_server_names(grpc_addr));
        if grpc_server_names.is_empty() {
            return Err(ConfigError::Invalid(
                "grpc_server_names must not be empty".into(),
            ));
        }
        let grpc_advertise = self
            .grpc_advertise
            .clone()
            .or(file.grpc_advertise)
            .unwrap_or_else(|| {
                let host = if grpc_addr.ip().is_unspecified() {
                    grpc_server_names
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "localhost".into())
                } else {
                    grpc_addr.ip().to_string()
                };
                format!("{host}:{}", grpc_addr.port())
            });
        let heartbeat_interval_seconds = self
            .heartbeat_interval_seconds
            .or(file.heartbeat_interval_seconds)
            .unwrap_or(15);
        if !(1..=3600).contains(&heartbeat_interval_seconds) {
            return Err(ConfigError::Invalid(
                "heartbeat_interval_seconds must be between 1 and 3600".into(),
            ));
        }
        let agent_certificate_ttl_seconds = self
            .agent_certificate_ttl_seconds
            .or(file.agent_certificate_ttl_seconds)
            .unwrap_or(24 * 3600);
        if !(3..=90 * 24 * 3600).contains(&agent_certificate_ttl_seconds) {
            return Err(ConfigError::Invalid(
                "agent_certificate_ttl_seconds must be between 3 and 7776000 (90 days)".into(),
            ));
        }
        let public_url = self.public_url.clone().or(file.public_url);
        if let Some(url) = &public_url {
            let loopback_http = ["http://127.", "http://localhost", "http://[::1]"]
                .iter()
                .any(|prefix| url.starts_with(prefix));
            if !(url.starts_with("https://") || loopback_http) {
                return Err(ConfigError::Invalid(format!(
                    "public_url {url:?} must start with https:// (http:// only for a loopback address)"
                )));
            }
        }
        for provider in &file.oidc {
            provider.validate().map_err(ConfigError::Invalid)?;
        }
        let audit_checkpoint_interval_seconds = self
            .audit_checkpoint_interval_seconds
            .or(file.audit_checkpoint_interval_seconds)
            .unwrap_or(300);
        if !(1..=86_400).contains(&audit_checkpoint_interval_seconds) {
            return Err(ConfigError::Invalid(
                "audit_checkpoint_interval_seconds must be between 1 and 86400".into(),
            ));
        }
        let drain_seconds = self.drain_seconds.or(file.drain_seconds).unwrap_or(10);
        if !(1..=3600).contains(&drain_seconds) {
            return Err(ConfigError::Invalid(format!(
                "drain_seconds must be between 1 and 3600 (got {drain_seconds})"
            )));
        }
        let audit_forward = file.audit_forward.unwrap_or_default();
        audit_forward.validate().map_err(ConfigError::Invalid)?;
        let web_dir = match self.web_dir.clone().or(file.web_dir) {
            Some(dir) if !dir.join("index.html").is_file() => {
                return Err(ConfigError::Invalid(format!(
                    "web_dir {} has no index.html (build it with `npm run build` in web-admin/)",
                    dir.display()
                )));
            }
            Some(dir) => Some(dir),
            None => default_web_dir(),
        };
        Ok(Config {
            web_dir,
            audit_forward,
            audit_checkpoint_interval_seconds,
            drain_seconds,
            public_url,
            oidc: file.oidc,
            database_url,
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("moltops-data")),
            http_addr,
            grpc_addr,
            grpc_advertise,
            grpc_server_names,
            http_tls,
            heartbeat_interval_seconds,
            agent_certificate_ttl_seconds,
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            database_max_connections: self
                .database_max_connections
                .or(file.database_max_connections)
                .unwrap_or(20),
            trusted_proxies: self
                .trusted_proxies
                .clone()
                .or(file.trusted_proxies)
                .unwrap_or_default(),
        })
    }
}

fn default_server_names(grpc_addr: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !grpc_addr.ip().is_unspecified() && !grpc_addr.ip().is_loopback() {
        names.push(grpc_addr.ip().to_string());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(argv: &[&str]) -> ServeArgs {
        let mut all = vec!["moltops-server", "--database-url", "postgres://x/y"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all).unwrap().args
    }

    #[test]
    fn defaults_are_loopback() {
        let config = parse(&[]).resolve().unwrap();
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:7337");
        assert_eq!(config.grpc_addr.to_string(), "127.0.0.1:7338");
        assert_eq!(config.grpc_advertise, "127.0.0.1:7338");
        assert_eq!(config.heartbeat_interval_seconds, 15);
        assert_eq!(config.drain_seconds, 10);
    }

    #[test]
    fn drain_seconds_comes_from_the_file_or_the_flag_and_is_bounded() {
        let dir = std::env::temp_dir().join(format!("moltops-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("moltops.toml");
        std::fs::write(&path, "drain_seconds = 30\n").unwrap();
        let p = path.to_str().unwrap();
        let from_file = parse(&["--config", p]).resolve().unwrap();
        assert_eq!(from_file.drain_seconds, 30);
        let flag_wins = parse(&["--config", p, "--drain-seconds", "45"])
            .resolve()
            .unwrap();
        assert_eq!(flag_wins.drain_seconds, 45);
        for accepted in ["1", "3600"] {
            let config = parse(&["--drain-seconds", accepted]).resolve().unwrap();
            assert_eq!(config.drain_seconds.to_string(), accepted);
        }
        for refused in ["0", "3601"] {
            let err = parse(&["--drain-seconds", refused])
                .resolve()
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("drain_seconds must be between 1 and 3600 (got {refused})")
            );
        }
        std::fs::write(&path, "drain_seconds = 0\n").unwrap();
        let err = parse(&["--config", p]).resolve().unwrap_err().to_string();
        assert!(err.contains("drain_seconds"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn public_http_without_tls_is_refused_with_a_message_that_says_how_to_fix_it() {
        let err = parse(&["--http-addr", "0.0.0.0:7337"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("without TLS") && err.contains("MOLTOPS_HTTP_TLS_CERT"),
            "{err}"
        );
        let ok = parse(&[
            "--http-addr",
            "0.0.0.0:7337",
            "--http-tls-cert",
            "c.pem",
            "--http-tls-key",
            "k.pem",
        ]);
        assert!(ok.resolve().is_ok());
        let half = parse(&["--http-tls-cert", "c.pem"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(half.contains("together"), "{half}");
    }

    #[test]
    fn file_keys_are_checked_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("moltops-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("moltops.toml");
        std::fs::write(
            &path,
            "heartbeat_interval_seconds = 5\ngrpc_addr = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let config = parse(&["--config", p, "--grpc-addr", "127.0.0.1:9001"])
            .resolve()
            .unwrap();
        assert_eq!(config.heartbeat_interval_seconds, 5);
        assert_eq!(config.grpc_addr.port(), 9001);
        std::fs::write(&path, "heartbeat_interval = 5\n").unwrap();
        let err = parse(&["--config", p]).resolve().unwrap_err().to_string();
        assert!(err.contains("heartbeat_interval"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
