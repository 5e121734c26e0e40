//! `moltopsctl`: pairing login approved by another `moltopsctl`, then the saved session in use,
//! with the role it was given.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use moltops_e2e::{Agent, Fixture, ServerOptions, binary, wait_exit};
use serde_json::json;

fn ctl(
    server: &str,
    config_dir: &std::path::Path,
    token: Option<&str>,
    args: &[&str],
) -> std::process::Output {
    let mut command = Command::new(binary("moltopsctl"));
    command
        .arg("--server")
        .arg(server)
        .args(args)
        .env("MOLTOPS_CONFIG_DIR", config_dir)
        .env_remove("MOLTOPS_TOKEN");
    if let Some(t) = token {
        command.env("MOLTOPS_TOKEN", t);
    }
    command.output().unwrap()
}

#[tokio::test]
async fn a_cli_pairs_gets_a_session_and_sees_exactly_what_its_role_allows() {
    let fx = Fixture::start(ServerOptions::default()).await;
    let (node_id, state) = fx.enroll("agent", json!({ "env": "lab" })).await;
    let _agent = Agent::start(&state);
    fx.api.wait_status(&node_id, "online").await;
    let server = fx.server().url("");
    let config = fx.dir.join("cli-config");

    let mut login = Command::new(binary("moltopsctl"))
        .args([
            "--server",
            &server,
            "login",
            "--name",
            "ci laptop",
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
    let first = lines.next().unwrap().unwrap();
    let code = first
        .strip_prefix("pairing code: ")
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();

    // An owner approves it as a viewer with another moltopsctl, using an API token.
    let approve = ctl(
        &server,
        &fx.dir.join("owner"),
        Some(&fx.api.token),
        &[
            "pair",
            "approve",
            &code,
            "--role",
            "viewer",
            "--name",
            "ci laptop",
        ],
    );
    assert!(
        approve.status.success(),
        "{}",
        String::from_utf8_lossy(&approve.stderr)
    );
    let status = wait_exit(&mut login, moltops_e2e::DEADLINE).expect("login did not finish");
    assert!(status.success(), "login failed");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(config.join("credentials.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let whoami = ctl(&server, &config, None, &["whoami"]);
    let text = String::from_utf8_lossy(&whoami.stdout);
    assert!(
        text.contains("ci laptop") && text.contains("role viewer"),
        "{text}"
    );
    let nodes = ctl(
        &server,
        &config,
        None,
        &["--json", "nodes", "list", "--selector", "env=lab"],
    );
    let listed: serde_json::Value = serde_json::from_slice(&nodes.stdout).unwrap();
    assert_eq!(listed[0]["id"], node_id.as_str());

    // A viewer may not create enrollment tokens or ping; the error names the reason.
    let denied = ctl(
        &server,
        &config,
        None,
        &["enrollment-tokens", "create", "--label", "env=lab"],
    );
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("403 (forbidden)"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    // The owner may.
    let ping = ctl(
        &server,
        &fx.dir.join("owner"),
        Some(&fx.api.token),
        &["nodes", "ping", &node_id],
    );
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stderr)
    );
    assert!(String::from_utf8_lossy(&ping.stdout).contains("pong"));
    // A viewer reads the node's metrics and the fleet summary.
    moltops_e2e::wait_for("the node's metrics through the CLI", || async {
        let out = ctl(&server, &config, None, &["nodes", "metrics", &node_id]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains("cpu ") && text.contains("mem ")).then_some(())
    })
    .await;
    let summary = ctl(&server, &config, None, &["nodes", "summary"]);
    let text = String::from_utf8_lossy(&summary.stdout);
    assert!(text.contains("1 nodes: 1 online"), "{text}");

    // Logout ends the session at once.
    assert!(ctl(&server, &config, None, &["logout"]).status.success());
    assert!(!ctl(&server, &config, None, &["whoami"]).status.success());
    fx.finish().await;
}
