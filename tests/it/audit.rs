//! The audit trail end to end over the real binaries: `moltopsctl audit export` keeps the log and
//! its signed checkpoints off the box, and `moltopsctl audit verify` (with and without the
//! exported checkpoints) catches a row edited in the database behind the server's back, even with
//! the stored checkpoints deleted. The consistent-rewrite case, which needs the chain encoding, is
//! in control-plane/tests/it/audit.rs.

use std::process::Command;

use moltops_e2e::{Fixture, ServerOptions, binary};
use serde_json::json;

#[tokio::test]
async fn the_cli_exports_the_log_and_verify_catches_an_edit_behind_the_servers_back() {
    let fx = Fixture::start(ServerOptions::default()).await;
    fx.enroll("agent", json!({ "env": "lab" })).await;
    let (status, _) = fx.api.post("/v1/enrollment-tokens", json!({})).await;
    assert_eq!(status, 201);
    let (status, checkpoint) = fx.api.post("/v1/audit/checkpoints", json!(null)).await;
    assert!(status == 201 || status == 200, "{checkpoint}");
    let server = fx.server().url("");
    let ctl = |args: &[&str]| {
        Command::new(binary("moltopsctl"))
            .arg("--server")
            .arg(&server)
            .args(args)
            .env("MOLTOPS_TOKEN", &fx.api.token)
            .env("MOLTOPS_CONFIG_DIR", fx.dir.join("cli"))
            .output()
            .unwrap()
    };
    let export = fx.dir.join("audit.jsonl");
    let out = ctl(&["audit", "export", "--output", export.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(
        text.lines().any(|l| l.contains(r#""type":"checkpoint""#)),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(r#""action":"node.enroll""#)),
        "{text}"
    );
    let out = ctl(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Someone with database access edits the first row and deletes the stored checkpoints.
    let mut conn = fx.db.as_ref().unwrap().connect().await;
    let rows: i64 = sqlx::query_scalar("select count(*) from audit_events")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(rows >= 3);
    sqlx::query("begin").execute(&mut conn).await.unwrap();
    sqlx::query("set local session_replication_role = replica")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("update audit_events set target_id = 'someone-else' where seq = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("delete from audit_checkpoints")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("commit").execute(&mut conn).await.unwrap();
    let out = ctl(&["audit", "verify"]);
    assert!(
        !out.status.success(),
        "an edited row is caught by the chain itself"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("BROKEN at 1"), "{stdout}");
    // And with the earlier export's checkpoints it fails as well.
    let out = ctl(&["audit", "verify", "--checkpoints", export.to_str().unwrap()]);
    assert!(!out.status.success());
    fx.finish().await;
}

/// A syslog collector on TCP (RFC 6587 octet counting) that records every message.
struct Collector {
    address: std::net::SocketAddr,
    messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Collector {
    async fn start(address: &str, messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>) -> Self {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let sink = messages.clone();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tracked = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let sink = sink.clone();
                let handle = tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        // Octet counting: "LEN SP MSG".
                        while let Some(space) = buffer.iter().position(|b| *b == b' ') {
                            let len: usize = std::str::from_utf8(&buffer[..space])
                                .unwrap()
                                .parse()
                                .unwrap();
                            if buffer.len() < space + 1 + len {
                                break;
                            }
                            let message =
                                String::from_utf8(buffer[space + 1..space + 1 + len].to_vec())
                                    .unwrap();
                            sink.lock().unwrap().push(message);
                            buffer.drain(..space + 1 + len);
                        }
                    }
                });
                tracked.lock().unwrap().push(handle);
            }
        });
        Self {
            address,
            messages,
            task,
            connections,
        }
    }

    /// Closes the listener and every connection (the collector goes away).
    fn stop(self) -> std::net::SocketAddr {
        self.task.abort();
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
        self.address
    }

    fn seqs(&self) -> Vec<i64> {
        seqs_in(&self.messages.lock().unwrap())
    }
}

fn seqs_in(messages: &[String]) -> Vec<i64> {
    let mut seqs: Vec<i64> = messages
        .iter()
        .map(|m| {
            let json = &m[m.find('{').unwrap()..];
            serde_json::from_str::<serde_json::Value>(json).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs
}

/// A webhook receiver that refuses the first `refuse` requests (503), then records bodies and
/// signatures.
async fn webhook(
    refuse: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = received.clone();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            let count = count.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8(head).unwrap();
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix(&format!("{name}: "))
                                .map(str::to_owned)
                        })
                    };
                    let length: usize = header("content-length").unwrap().trim().parse().unwrap();
                    let mut body = vec![0u8; length];
                    stream.read_exact(&mut body).await.unwrap();
                    let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let status = if n < refuse {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    };
                    if n >= refuse {
                        sink.lock().unwrap().push((
                            String::from_utf8(body).unwrap(),
                            header("x-moltops-signature").unwrap_or_default(),
                        ));
                    }
                    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, received)
}

fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let inner: Vec<u8> = block
        .iter()
        .map(|b| b ^ 0x36)
        .chain(message.iter().copied())
        .collect();
    let inner = Sha256::digest(inner);
    let outer: Vec<u8> = block
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(inner.iter().copied())
        .collect();
    hex::encode(Sha256::digest(outer))
}

#[tokio::test]
async fn the_log_is_shipped_to_syslog_and_a_webhook_and_catches_up_after_an_outage() {
    let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let collector = Collector::start("127.0.0.1:0", messages.clone()).await;
    let (hook, received) = webhook(2).await;
    let fx = Fixture::start(ServerOptions {
        config_toml: Some(format!(
            "[audit_forward]\nsyslog_tcp = \"{}\"\nwebhook_url = \"http://{hook}/hook\"\npoll_interval_ms = 100\nmax_backoff_ms = 400\n",
            collector.address
        )),
        env: vec![("MOLTOPS_AUDIT_WEBHOOK_SECRET".into(), "canary-webhook-secret".into())],
        ..ServerOptions::default()
    })
    .await;
    async fn head(fx: &Fixture) -> i64 {
        let mut conn = fx.db.as_ref().unwrap().connect().await;
        sqlx::query_scalar::<_, i64>("select coalesce(max(seq), 0) from audit_events")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }
    for _ in 0..3 {
        assert_eq!(fx.api.post("/v1/enrollment-tokens", json!({})).await.0, 201);
    }
    let n = head(&fx).await;
    assert!(n >= 3);
    moltops_e2e::wait_for("syslog has every row", || async {
        let seqs = collector.seqs();
        (1..=n).all(|s| seqs.contains(&s)).then_some(())
    })
    .await;
    // The webhook refused twice; the rows arrived anyway, in order, signed.
    moltops_e2e::wait_for("the webhook has every row", || async {
        let bodies = received.lock().unwrap().clone();
        let seqs: Vec<i64> = bodies
            .iter()
            .flat_map(|(b, _)| {
                serde_json::from_str::<serde_json::Value>(b).unwrap()["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["seq"].as_i64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        (seqs.len() as i64 >= n && seqs.iter().take(n as usize).copied().eq(1..=n)).then_some(())
    })
    .await;
    for (body, signature) in received.lock().unwrap().iter() {
        let expected = hmac_sha256_hex(b"canary-webhook-secret", body.as_bytes());
        assert_eq!(signature, &format!("sha256={expected}"));
    }
    let log = fx.server().log_text();
    assert!(
        !log.contains("canary-webhook-secret"),
        "the secret never reaches the log"
    );

    // The collector goes away; events keep happening; it comes back and catches up.
    let address = collector.stop();
    for _ in 0..2 {
        assert_eq!(fx.api.post("/v1/enrollment-tokens", json!({})).await.0, 201);
    }
    let n = head(&fx).await;
    // The outage is real: the forwarder fails and backs off before the collector returns.
    moltops_e2e::wait_for("the forwarder notices the collector is gone", || async {
        fx.server()
            .log_text()
            .contains("audit forwarding failed")
            .then_some(())
    })
    .await;
    let collector = Collector::start(&address.to_string(), messages.clone()).await;
    moltops_e2e::wait_for("syslog caught up after the outage", || async {
        let seqs = collector.seqs();
        (1..=n).all(|s| seqs.contains(&s)).then_some(())
    })
    .await;
    fx.finish().await;
}
