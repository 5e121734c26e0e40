//! Ships the audit log off the box: to a syslog collector over TCP (RFC 5424 messages, RFC 6587
//! octet-counting framing) and/or to a webhook (JSON batches, optionally HMAC-signed).
//!
//! One replica forwards at a time (a session advisory lock; another takes over if it dies).
//! Each sink has a cursor in `audit_forward_cursors`, moved only after the sink accepted a batch,
//! so delivery is at least once and in sequence order; a sink that is down is retried with
//! exponential backoff and catches up from where it stopped. A new sink starts from the first row.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::audit::Row;

/// `[audit_forward]` in the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// `host:port` of a syslog collector that accepts TCP.
    #[serde(default)]
    pub syslog_tcp: Option<String>,
    /// URL that receives `POST {"events": [...]}`; with `MOLTOPS_AUDIT_WEBHOOK_SECRET` set,
    /// each request carries `X-Moltops-Signature: sha256=<hex HMAC of the body>`.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Rows per batch (default 100).
    #[serde(default)]
    pub batch_size: Option<i64>,
    /// How often to look for new rows, in milliseconds (default 2000).
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
    /// The longest wait between retries of a failing sink, in milliseconds (default 60000).
    #[serde(default)]
    pub max_backoff_ms: Option<u64>,
}

impl ForwardConfig {
    pub fn is_empty(&self) -> bool {
        self.syslog_tcp.is_none() && self.webhook_url.is_none()
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.webhook_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(format!(
                "audit_forward.webhook_url {url:?} is not an http(s) URL"
            ));
        }
        if self.batch_size.is_some_and(|b| !(1..=10_000).contains(&b)) {
            return Err("audit_forward.batch_size must be between 1 and 10000".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum SinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

enum Sink {
    Syslog {
        address: String,
        stream: Option<tokio::net::TcpStream>,
        hostname: String,
    },
    Webhook {
        url: String,
        client: reqwest::Client,
        secret: Option<zeroize::Zeroizing<String>>,
    },
}

impl Sink {
    fn name(&self) -> &'static str {
        match self {
            Self::Syslog { .. } => "syslog",
            Self::Webhook { .. } => "webhook",
        }
    }

    async fn send(&mut self, rows: &[Row]) -> Result<(), SinkError> {
        match self {
            Self::Syslog {
                address,
                stream,
                hostname,
            } => {
                let mut frames = Vec::new();
                for row in rows {
                    let message = syslog_message(row, hostname);
                    frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
                    frames.extend_from_slice(message.as_bytes());
                }
                // A collector that closed the connection (EOF): reconnect before writing, or the
                // batch would vanish into a dead socket. (Plain TCP syslog has no
                // acknowledgements: a collector that dies without closing can still lose the
                // batch in flight. The webhook sink acknowledges every batch.)
                if let Some(connection) = stream.as_ref() {
                    let mut probe = [0u8; 64];
                    match connection.try_read(&mut probe) {
                        Ok(0) => *stream = None,
                        Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => *stream = None,
                        _ => {}
                    }
                }
                if stream.is_none() {
                    let connected = tokio::time::timeout(
                        Duration::from_secs(10),
                        tokio::net::TcpStream::connect(address.as_str()),
                    )
                    .await
                    .map_err(|_| std::io::Error::other("connect timed out"))??;
                    *stream = Some(connected);
                }
                let Some(connection) = stream.as_mut() else {
                    return Err(std::io::Error::other("not connected").into());
                };
                let written = tokio::time::timeout(Duration::from_secs(10), async {
                    connection.write_all(&frames).await?;
                    connection.flush().await
                })
                .await
                .map_err(|_| std::io::Error::other("write timed out"))
                .and_then(|r| r);
                if let Err(e) = written {
                    // Reconnect next time; the batch is sent again (at least once).
                    *stream = None;
                    return Err(e.into());
                }
                Ok(())
            }
            Self::Webhook {
                url,
                client,
                secret,
            } => {
                let body = serde_json::to_vec(&json!({ "events": rows }))
                    .map_err(|e| SinkError::Http(e.to_string()))?;
                let mut request = client
                    .post(url.as_str())
                    .header("content-type", "application/json");
                if let Some(secret) = secret {
                    request = request.header(
                        "x-moltops-signature",
                        format!("sha256={}", hmac_sha256(secret.as_bytes(), &body)),
                    );
                }
                let response = request
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| SinkError::Http(e.to_string()))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(SinkError::Http(format!(
                        "webhook answered {}",
                        response.status()
                    )))
                }
            }
        }
    }
}

/// RFC 5424: `<109>1 TIMESTAMP HOSTNAME moltops - MSGID - JSON` (facility log audit, notice).
pub fn syslog_message(row: &Row, hostname: &str) -> String {
    let msgid: String = row
        .action
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    let body = serde_json::to_string(row).unwrap_or_default();
    format!(
        "<109>1 {} {} moltops - {} - {}",
        row.occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        if hostname.is_empty() { "-" } else { hostname },
        if msgid.is_empty() {
            "-".to_owned()
        } else {
            msgid
        },
        body
    )
}

/// HMAC-SHA256, hex.
fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), message);
    hex::encode(tag.as_ref())
}

/// Forwards until `shutdown`. Takes the cluster-wide forwarding lock first; without it, waits.
pub async fn run(pool: PgPool, config: ForwardConfig, shutdown: CancellationToken) {
    let poll = Duration::from_millis(config.poll_interval_ms.unwrap_or(2000));
    let max_backoff = Duration::from_millis(config.max_backoff_ms.unwrap_or(60_000));
    let batch = config.batch_size.unwrap_or(100);
    let mut sinks = Vec::new();
    if let Some(address) = &config.syslog_tcp {
        sinks.push(Sink::Syslog {
            address: address.clone(),
            stream: None,
            hostname: std::env::var("HOSTNAME").unwrap_or_default(),
        });
    }
    if let Some(url) = &config.webhook_url {
        let _ = rustls::crypto::ring::default_provider().install_default();
        match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
        {
            Ok(client) => sinks.push(Sink::Webhook {
                url: url.clone(),
                client,
                secret: std::env::var("MOLTOPS_AUDIT_WEBHOOK_SECRET")
                    .ok()
                    .filter(|s| !s.is_empty())
                    .map(zeroize::Zeroizing::new),
            }),
            Err(e) => tracing::error!(error = %e, "cannot build the audit webhook client"),
        }
    }
    if sinks.is_empty() {
        return;
    }
    // Per sink: when it may be tried again, and the current backoff.
    let mut retry: Vec<(Option<tokio::time::Instant>, Duration)> =
        sinks.iter().map(|_| (None, Duration::ZERO)).collect();
    loop {
        let mut conn = match pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "audit forwarding: no database connection");
                if wait(&shutdown, poll).await {
                    return;
                }
                continue;
            }
        };
        let locked: Result<bool, _> = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(crate::db::ADVISORY_LOCK_AUDIT_FORWARD)
            .fetch_one(&mut *conn)
            .await;
        if !matches!(locked, Ok(true)) {
            if locked.is_err() {
                // Unknown whether we hold it: close the connection rather than pool it.
                let _ = conn.detach();
            }
            if wait(&shutdown, poll).await {
                return;
            }
            continue;
        }
        tracing::info!("this replica forwards the audit log");
        let stop = 'forward: loop {
            let mut sent_any = false;
            for (sink, (not_before, backoff)) in sinks.iter_mut().zip(retry.iter_mut()) {
                if not_before.is_some_and(|t| tokio::time::Instant::now() < t) {
                    continue;
                }
                match forward_batch(&mut conn, sink, batch).await {
                    Ok(sent) => {
                        *not_before = None;
                        *backoff = Duration::ZERO;
                        sent_any |= sent > 0;
                    }
                    Err(SinkError::Database(e)) => {
                        tracing::warn!(error = %e, "audit forwarding lost the database");
                        break 'forward false;
                    }
                    Err(e) => {
                        *backoff = (*backoff * 2).clamp(Duration::from_millis(200), max_backoff);
                        *not_before = Some(tokio::time::Instant::now() + *backoff);
                        tracing::warn!(sink = sink.name(), error = %e, retry_in_ms = backoff.as_millis() as u64, "audit forwarding failed; will retry");
                    }
                }
            }
            if !sent_any && wait(&shutdown, poll).await {
                break true;
            }
        };
        // Never hand a connection that may still hold the lock back to the pool.
        let _ = sqlx::query("select pg_advisory_unlock($1)")
            .bind(crate::db::ADVISORY_LOCK_AUDIT_FORWARD)
            .execute(&mut *conn)
            .await;
        let _ = conn.detach();
        if stop {
            return;
        }
    }
}

/// True if shutdown came first.
async fn wait(shutdown: &CancellationToken, period: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(period) => false,
    }
}

/// Sends the next batch after the sink's cursor; returns how many rows went. Runs on the
/// connection that holds the forwarding lock: if that connection is gone, so is the right to
/// forward, and the loop stops.
async fn forward_batch(
    conn: &mut sqlx::PgConnection,
    sink: &mut Sink,
    batch: i64,
) -> Result<usize, SinkError> {
    let now: DateTime<Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query(
        "insert into audit_forward_cursors (sink, last_seq, updated_at) values ($1, 0, $2)
         on conflict (sink) do nothing",
    )
    .bind(sink.name())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let after: i64 =
        sqlx::query_scalar("select last_seq from audit_forward_cursors where sink = $1")
            .bind(sink.name())
            .fetch_one(&mut *conn)
            .await?;
    let rows = crate::audit::rows_after(&mut *conn, after, batch).await?;
    let Some(last) = rows.last().map(|r| r.seq) else {
        return Ok(0);
    };
    sink.send(&rows).await?;
    // Only forward: a cursor never moves back.
    sqlx::query(
        "update audit_forward_cursors set last_seq = $2, updated_at = $3
         where sink = $1 and last_seq < $2",
    )
    .bind(sink.name())
    .bind(last)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_messages_are_rfc5424_with_the_row_as_json() {
        let row = Row {
            seq: 3,
            id: uuid::Uuid::nil(),
            occurred_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
            actor_kind: "system".into(),
            actor_id: "x".into(),
            auth_method: "system".into(),
            action: "node.revoke".into(),
            target_kind: "node".into(),
            target_id: "n".into(),
            reason: None,
            outcome: "success".into(),
            request_id: String::new(),
            detail: json!({}),
            prev_hash: None,
            hash: None,
        };
        let message = syslog_message(&row, "cp-1");
        assert!(
            message
                .starts_with("<109>1 2027-01-15T08:00:00.000000Z cp-1 moltops - node.revoke - {"),
            "{message}"
        );
        assert!(message.contains(r#""seq":3"#));
    }

    #[test]
    fn webhook_signatures_are_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" // pragma: allowlist secret
        );
    }
}
