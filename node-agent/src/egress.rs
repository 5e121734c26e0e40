//! The one governed egress path for installs: a forward proxy on loopback that the agent points
//! the installer at (`npm --proxy/--https-proxy`). It lets through only connections to the
//! allowed hosts and ports, counts every byte against a budget (cutting connections once it is
//! spent), and reports each connection: host, port, bytes each way, allowed or why not.
//!
//! The allowed hosts come from the installer's own configuration (`npm config get registry`),
//! never from a name written into the code, so an enterprise's private mirror just works.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::run::tokio_util_shim::CancellationToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What may pass.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Host names (or IP literals) allowed, compared case-insensitively and exactly.
    pub allowed_hosts: Vec<String>,
    /// Ports allowed on those hosts.
    pub allowed_ports: Vec<u16>,
    /// Bytes (both directions, all connections) before connections are cut.
    pub byte_budget: u64,
}

impl Policy {
    fn allows(&self, host: &str, port: u16) -> Result<(), String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !self
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
        {
            return Err(format!("host {host} is not on the allowlist"));
        }
        if !self.allowed_ports.contains(&port) {
            return Err(format!("port {port} is not allowed"));
        }
        Ok(())
    }
}

/// One connection, as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub host: String,
    pub port: u16,
    pub allowed: bool,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Why it was refused or cut.
    pub note: Option<String>,
}

/// A running proxy; stops when dropped.
pub struct EgressProxy {
    addr: SocketAddr,
    reports: Arc<Mutex<Vec<Report>>>,
    used: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The host of the installer's registry (`npm config get registry`), for the allowlist.
pub async fn npm_registry_host(npm: &std::path::Path) -> std::io::Result<(String, u16)> {
    let out = tokio::process::Command::new(npm)
        .args(["config", "get", "registry"])
        .output()
        .await?;
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    parse_url_host(&url)
        .ok_or_else(|| std::io::Error::other(format!("npm's registry {url:?} is not a URL")))
}

/// (host, port) of an http(s) URL.
pub fn parse_url_host(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    split_host_port(authority, default_port)
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.is_empty() {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_ascii_lowercase(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_ascii_lowercase(), port.parse().ok()?)),
        None => Some((authority.to_ascii_lowercase(), default_port)),
    }
}

impl EgressProxy {
    /// Starts on an ephemeral loopback port.
    pub async fn start(policy: Policy) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let reports = Arc::new(Mutex::new(Vec::new()));
        let used = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let policy = Arc::new(policy);
        {
            let (reports, used, stop) = (reports.clone(), used.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        () = stop.cancelled() => return,
                        a = listener.accept() => a,
                    };
                    let Ok((client, _)) = accepted else { continue };
                    let (policy, reports, used, stop) =
                        (policy.clone(), reports.clone(), used.clone(), stop.clone());
                    tokio::spawn(async move {
                        let report = tokio::select! {
                            () = stop.cancelled() => return,
                            r = handle(client, &policy, &used) => r,
                        };
                        if let Some(report) = report {
                            tracing::info!(host = %report.host, port = report.port, allowed = report.allowed,
                                bytes_up = report.bytes_up, bytes_down = report.bytes_down,
                                note = report.note.as_deref().unwrap_or(""), "egress");
                            if let Ok(mut all) = reports.lock() {
                                all.push(report);
                            }
                        }
                    });
                }
            });
        }
        Ok(Self {
            addr,
            reports,
            used,
            stop,
        })
    }

    /// `http://127.0.0.1:PORT`, for `--proxy` and `--https-proxy`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn reports(&self) -> Vec<Report> {
        self.reports.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn bytes_used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

const MAX_HEAD: usize = 16 * 1024;

/// Serves one client connection; returns its report (None for garbage that named no target).
async fn handle(mut client: TcpStream, policy: &Policy, used: &AtomicU64) -> Option<Report> {
    let head = read_head(&mut client).await?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next()?.to_owned();
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?;
    let target = parts.next()?;
    let (host, port, forward_head) = if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_host_port(target, 443)?;
        (host, port, None)
    } else {
        // Plain HTTP through a proxy: absolute-form; forwarded in origin-form.
        let (host, port) = parse_url_host(target)?;
        let path = target
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("/");
        let version = parts.next().unwrap_or("HTTP/1.1");
        (
            host.clone(),
            port,
            Some(origin_form(&text, method, path, version, &host, port)),
        )
    };
    let mut report = Report {
        host: host.clone(),
        port,
        allowed: false,
        bytes_up: 0,
        bytes_down: 0,
        note: None,
    };
    if let Err(why) = policy.allows(&host, port) {
        let _ = client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        report.note = Some(why);
        return Some(report);
    }
    if used.load(Ordering::Relaxed) >= policy.byte_budget {
        let _ = client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        report.note = Some("the byte budget is spent".into());
        return Some(report);
    }
    report.allowed = true;
    let mut upstream = match TcpStream::connect((host.as_str(), port)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = client
                .write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            report.note = Some(format!("upstream: {e}"));
            return Some(report);
        }
    };
    match forward_head {
        None => {
            if client
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await
                .is_err()
            {
                return Some(report);
            }
        }
        Some(head) => {
            if upstream.write_all(&head).await.is_err() {
                return Some(report);
            }
            report.bytes_up += head.len() as u64;
            used.fetch_add(head.len() as u64, Ordering::Relaxed);
        }
    }
    let (up, down, cut) = relay(client, upstream, policy.byte_budget, used).await;
    report.bytes_up += up;
    report.bytes_down += down;
    if cut {
        report.note = Some("cut: the byte budget is spent".into());
    }
    Some(report)
}

/// A proxied plain-HTTP request in origin form, its `Host` header the checked target's whatever
/// the client wrote.
fn origin_form(
    head: &str,
    method: &str,
    path: &str,
    version: &str,
    host: &str,
    port: u16,
) -> Vec<u8> {
    let mut out = format!("{method} {path} {version}\r\nHost: {host}:{port}\r\n");
    for line in head
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("host:"))
    {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

async fn read_head(client: &mut TcpStream) -> Option<Vec<u8>> {
    // A client that does not finish its request head promptly is dropped.
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        read_head_unbounded(client),
    )
    .await
    .ok()
    .flatten()
}

async fn read_head_unbounded(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return None;
        }
        match client.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

/// Copies both ways until either side closes or the budget is spent; (up, down, cut).
async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    budget: u64,
    used: &AtomicU64,
) -> (u64, u64, bool) {
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let cut = CancellationToken::new();
    let ((up, cut_up), (down, cut_down)) = tokio::join!(
        pipe(client_read, upstream_write, budget, used, cut.clone()),
        pipe(upstream_read, client_write, budget, used, cut)
    );
    (up, down, cut_up || cut_down)
}

/// One direction of a relay; spends the shared budget and cuts both directions when it is gone.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    budget: u64,
    used: &AtomicU64,
    cut: CancellationToken,
) -> (u64, bool) {
    let mut total = 0u64;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            () = cut.cancelled() => return (total, false),
            r = from.read(&mut buffer) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        let before = used.fetch_add(n as u64, Ordering::Relaxed);
        if before + n as u64 > budget {
            cut.cancel();
            return (total, true);
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        total += n as u64;
    }
    let _ = to.shutdown().await;
    (total, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_forwarded_to_the_checked_host_only() {
        let head =
            "GET http://mirror.test:8080/pkg HTTP/1.1\r\nHost: evil.test\r\nAccept: */*\r\n\r\n";
        let out = String::from_utf8(origin_form(
            head,
            "GET",
            "/pkg",
            "HTTP/1.1",
            "mirror.test",
            8080,
        ))
        .unwrap();
        assert_eq!(
            out,
            "GET /pkg HTTP/1.1\r\nHost: mirror.test:8080\r\nAccept: */*\r\n\r\n"
        );
    }

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(
            parse_url_host("https://mirror.example.test/npm/"),
            Some(("mirror.example.test".into(), 443))
        );
        assert_eq!(
            parse_url_host("http://user:pw@10.0.0.5:4873"), // pragma: allowlist secret
            Some(("10.0.0.5".into(), 4873))
        );
        assert_eq!(
            parse_url_host("https://[::1]:8443/x"),
            Some(("::1".into(), 8443))
        );
        assert_eq!(parse_url_host("ftp://x"), None);
        assert_eq!(parse_url_host("not a url"), None);
    }

    /// A server that echoes, or (for "flood") sends `n` bytes.
    async fn target() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 5];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    if &buf == b"flood" {
                        let chunk = vec![b'x'; 64 * 1024];
                        for _ in 0..64 {
                            if s.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                    } else {
                        let _ = s.write_all(&buf).await;
                    }
                });
            }
        });
        addr
    }

    async fn connect_through(proxy: &EgressProxy, host: &str, port: u16) -> (TcpStream, String) {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(
            format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await.unwrap_or_default();
        (s, String::from_utf8_lossy(&head).into_owned())
    }

    fn policy(port: u16, budget: u64) -> Policy {
        Policy {
            allowed_hosts: vec!["127.0.0.1".into()],
            allowed_ports: vec![port],
            byte_budget: budget,
        }
    }

    /// Waits until the proxy has reported `n` connections.
    async fn reports(proxy: &EgressProxy, n: usize) -> Vec<Report> {
        for _ in 0..1500 {
            let r = proxy.reports();
            if r.len() >= n {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        proxy.reports()
    }

    #[tokio::test]
    async fn allowed_hosts_pass_and_are_counted_others_are_refused_and_reported() {
        let target = target().await;
        let proxy = EgressProxy::start(policy(target.port(), 1 << 20))
            .await
            .unwrap();
        let (mut s, head) = connect_through(&proxy, "127.0.0.1", target.port()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        s.write_all(b"hello").await.unwrap();
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"hello");
        drop(s);
        let (_, head) = connect_through(&proxy, "registry.invalid", 443).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        let (_, head) = connect_through(&proxy, "127.0.0.1", 22).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        let all = reports(&proxy, 3).await;
        let allowed = all.iter().find(|r| r.allowed).unwrap();
        assert_eq!((allowed.bytes_up, allowed.bytes_down), (5, 5));
        let denied: Vec<&Report> = all.iter().filter(|r| !r.allowed).collect();
        assert_eq!(denied.len(), 2);
        assert!(denied.iter().any(|r| r.host == "registry.invalid"
            && r.note.as_deref().is_some_and(|n| n.contains("allowlist"))));
        assert!(
            denied
                .iter()
                .any(|r| r.port == 22 && r.note.as_deref().is_some_and(|n| n.contains("port")))
        );
    }

    #[tokio::test]
    async fn the_byte_budget_cuts_a_runaway_download() {
        let target = target().await;
        let budget = 256 * 1024;
        let proxy = EgressProxy::start(policy(target.port(), budget))
            .await
            .unwrap();
        let (mut s, head) = connect_through(&proxy, "127.0.0.1", target.port()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        s.write_all(b"flood").await.unwrap();
        let mut received = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n as u64,
            }
        }
        assert!(
            received <= budget,
            "{received} bytes got through a {budget}-byte budget"
        );
        assert!(received < 4 * 1024 * 1024, "the 4 MiB flood was cut");
        let all = reports(&proxy, 1).await;
        assert!(
            all[0].note.as_deref().is_some_and(|n| n.contains("budget")),
            "{all:?}"
        );
        // Once spent, new connections are refused outright.
        let (_, head) = connect_through(&proxy, "127.0.0.1", target.port()).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    }

    /// `npm` through the proxy, with a private cache so nothing is served from disk.
    async fn npm(
        proxy: &EgressProxy,
        cache: &std::path::Path,
        args: &[&str],
    ) -> std::process::Output {
        tokio::process::Command::new("npm")
            .args(args)
            .args(["--proxy", &proxy.url(), "--https-proxy", &proxy.url()])
            .arg("--cache")
            .arg(cache)
            .args(["--fetch-retries", "0", "--no-audit", "--no-fund"])
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .output()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn npm_reaches_its_own_registry_through_the_proxy_and_nothing_else() {
        let (host, port) = npm_registry_host(std::path::Path::new("npm"))
            .await
            .unwrap();
        let cache = std::env::temp_dir().join(format!(
            "moltops-egress-npm-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let proxy = EgressProxy::start(Policy {
            allowed_hosts: vec![host.clone()],
            allowed_ports: vec![port],
            byte_budget: 256 * 1024 * 1024,
        })
        .await
        .unwrap();
        let out = npm(&proxy, &cache, &["view", "openclaw@2026.9.1", "version"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2026.9.1");
        let allowed = reports(&proxy, 1).await;
        assert!(
            allowed
                .iter()
                .any(|r| r.allowed && r.host == host && r.bytes_down > 0),
            "{allowed:?}"
        );
        // A registry that is not npm's own is refused at the proxy and reported.
        let out = npm(
            &proxy,
            &cache,
            &[
                "view",
                "openclaw",
                "version",
                "--registry",
                "https://registry.invalid/",
            ],
        )
        .await;
        assert!(!out.status.success());
        let all = reports(&proxy, allowed.len() + 1).await;
        assert!(
            all.iter()
                .any(|r| !r.allowed && r.host == "registry.invalid"),
            "{all:?}"
        );
        let _ = std::fs::remove_dir_all(cache);
    }

    #[tokio::test]
    async fn the_byte_budget_stops_a_download_from_the_real_registry() {
        let (host, port) = npm_registry_host(std::path::Path::new("npm"))
            .await
            .unwrap();
        let cache = std::env::temp_dir().join(format!(
            "moltops-egress-budget-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let budget = 64 * 1024;
        let proxy = EgressProxy::start(Policy {
            allowed_hosts: vec![host],
            allowed_ports: vec![port],
            byte_budget: budget,
        })
        .await
        .unwrap();
        // The package's metadata alone is far larger than the budget: it runs out first.
        let out = tokio::process::Command::new("npm")
            .args(["pack", "openclaw@2026.9.1", "--dry-run", "--json"])
            .args(["--proxy", &proxy.url(), "--https-proxy", &proxy.url()])
            .arg("--cache")
            .arg(&cache)
            .args(["--fetch-retries", "0"])
            .output()
            .await
            .unwrap();
        assert!(
            !out.status.success(),
            "the download should not have fit in {budget} bytes"
        );
        assert!(
            proxy.bytes_used() <= budget + 16 * 1024,
            "{} bytes",
            proxy.bytes_used()
        );
        let all = proxy.reports();
        assert!(
            all.iter()
                .any(|r| r.note.as_deref().is_some_and(|n| n.contains("budget"))),
            "{all:?}"
        );
        let _ = std::fs::remove_dir_all(cache);
    }
}
