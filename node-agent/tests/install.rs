//! The npm install path, for real: the scenario gateway packed as a tarball installs into a
//! versioned prefix exactly as OpenClaw will, and runs under the supervisor; a Node runtime the
//! host lacks is provided privately, downloaded through the governed egress proxy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use moltops_agent::egress::{EgressProxy, Policy, npm_registry_host};
use moltops_agent::install::{Npm, Version, host_node_version, satisfies};
use moltops_agent::supervisor::{Spec, Stopped, Supervisor};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "moltops-install-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// npm's cache survives between runs (CI stays fast), under target/.
fn cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("npm-cache")
}

async fn pack_scenario_gateway(into: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenario-gateway");
    let out = tokio::process::Command::new("npm")
        .args(["pack", "--silent", "--pack-destination"])
        .arg(into)
        .arg(&source)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    into.join(String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test]
async fn a_packed_gateway_installs_into_a_versioned_prefix_and_runs_supervised() {
    let dir = scratch("tarball");
    let tarball = pack_scenario_gateway(&dir).await;
    let npm = Npm {
        npm: PathBuf::from("npm"),
        root: dir.join("gateways"),
        cache: cache(),
        proxy: None,
    };
    let range = npm.engines_node(tarball.to_str().unwrap()).await.unwrap();
    assert_eq!(range.as_deref(), Some(">=18"));
    let node = npm.runtime_for(range.as_deref()).await.unwrap();
    assert_eq!(
        node,
        PathBuf::from("node"),
        "the host's Node satisfies >=18"
    );
    let prefix = npm
        .install(
            "moltops-scenario-gateway",
            "2026.9.1",
            tarball.to_str().unwrap(),
            &node,
        )
        .await
        .unwrap();
    assert_eq!(
        prefix,
        dir.join("gateways/moltops-scenario-gateway/2026.9.1")
    );
    let bin = prefix.join("bin/scenario-gateway");
    assert!(bin.exists());
    // Installing again is a no-op.
    let again = npm
        .install(
            "moltops-scenario-gateway",
            "2026.9.1",
            tarball.to_str().unwrap(),
            &node,
        )
        .await
        .unwrap();
    assert_eq!(again, prefix);
    assert!(npm.install("../evil", "1.0.0", "x", &node).await.is_err());

    // It runs under the supervisor and answers its health endpoints.
    let mut spec = Spec::new(
        bin,
        vec!["gateway".into(), "run".into(), "--port".into(), "0".into()],
        dir.join("gateway.log"),
    );
    spec.stop_timeout = Duration::from_secs(5);
    let supervisor = Supervisor::start(spec);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
        if log.contains("listening") {
            break log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never listened: {log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(log.contains("\"version\":\"2026.9.1\""), "{log}");
    assert_eq!(supervisor.stop().await, Stopped::Graceful);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_runtime_the_host_lacks_is_provided_privately_through_the_egress_proxy() {
    let host = host_node_version().await.unwrap();
    // A range the host's Node does not satisfy (OpenClaw 2026.9.x asks for 24.15+).
    let range = ">=24.15.0 <25";
    assert!(
        !satisfies(range, host),
        "this test needs a host Node outside {range}"
    );
    let (registry, port) = npm_registry_host(Path::new("npm")).await.unwrap();
    let proxy = EgressProxy::start(Policy {
        allowed_hosts: vec![registry.clone()],
        allowed_ports: vec![port],
        byte_budget: 512 * 1024 * 1024,
    })
    .await
    .unwrap();
    // A fresh prefix, so the runtime really is fetched through the proxy (npm's cache is shared).
    let root = scratch("runtime");
    let npm = Npm {
        npm: PathBuf::from("npm"),
        root: root.clone(),
        cache: cache(),
        proxy: Some(proxy.url()),
    };
    let node = npm.runtime_for(Some(range)).await.unwrap();
    assert!(
        node.starts_with(root.join("runtime/24")),
        "{}",
        node.display()
    );
    let out = tokio::process::Command::new(&node)
        .arg("--version")
        .output()
        .await
        .unwrap();
    let version = Version::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert!(satisfies(range, version), "{version}");
    let through = proxy.reports();
    assert!(
        through.iter().any(|r| r.allowed && r.host == registry),
        "the runtime came through the proxy: {through:?}"
    );
    let _ = std::fs::remove_dir_all(root);
}
