//! The web admin in a real browser — Debian's Chromium driven by playwright-core (never a
//! downloaded browser), axe-core on every screen — against a real control plane and a real agent.
//! The browser part is `tests/browser/flow.mjs` (an owner's whole flow, then a second browser
//! paired as a viewer that is offered no action and refused one by the server); this test
//! provides the world it runs in and checks, through the API, that what the operator did in the
//! browser really happened.

use std::path::Path;

use moltops_e2e::{Fixture, ServerOptions, binary, free_port, pack_scenario_gateway};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The console setup code the server printed at first boot.
fn setup_code(log: &str) -> String {
    let marker = "Setup code (valid ";
    let at = log.find(marker).expect("the server printed a setup code");
    let rest = &log[at..];
    let code = rest.split("): ").nth(1).unwrap();
    code.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

#[tokio::test]
async fn an_operator_enrolls_a_host_and_restarts_its_gateway_in_the_browser() {
    let dist = repo().join("web-admin/dist/index.html");
    assert!(
        dist.is_file(),
        "{} is missing: build the web admin first (`npm ci && npm run build` in web-admin/; scripts/test does this)",
        dist.display()
    );
    let browser_tests = repo().join("tests/browser");
    assert!(
        browser_tests.join("node_modules/playwright-core").is_dir(),
        "run `npm ci` in tests/browser (scripts/test does this)"
    );
    let chromium = std::env::var("MOLTOPS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: `apt-get install -y chromium` (.ci/run does this)"
    );
    let fx = Fixture::start(ServerOptions::default()).await;
    let code = setup_code(&fx.server().log_text());
    let tarball = pack_scenario_gateway(&fx.dir.join("pack"));
    let screenshots = repo().join("target/screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let agent_dir = fx.dir.join("browser-agent");
    let out = tokio::process::Command::new("node")
        .arg(browser_tests.join("flow.mjs"))
        .current_dir(&browser_tests)
        .env("MOLTOPS_URL", fx.server().url(""))
        .env("MOLTOPS_SETUP_CODE", &code)
        .env("MOLTOPS_AGENT_BIN", binary("moltops-agent"))
        .env("MOLTOPS_AGENT_DIR", &agent_dir)
        .env("MOLTOPS_GATEWAY_PACKAGE", &tarball)
        .env("MOLTOPS_GATEWAY_PORT", free_port().to_string())
        .env("MOLTOPS_SCREENSHOTS", &screenshots)
        .env("MOLTOPS_CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser flow failed:\n{stdout}\n{stderr}\nserver log tail:\n{}",
        fx.server()
            .log_text()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // What the browser did, seen through the API: the node it enrolled is there, its gateway was
    // restarted by the device the browser paired as, with the reason typed in the dialog.
    let (_, nodes) = fx.api.get("/v1/nodes").await;
    let node = nodes["items"][0]["id"]
        .as_str()
        .expect("the node enrolled from the browser")
        .to_owned();
    let (_, audit) = fx.api.get("/v1/audit?action=gateway.restart").await;
    let row = &audit["items"][0];
    assert_eq!(row["target_id"], node.as_str(), "{audit}");
    assert_eq!(row["actor_kind"], "device", "{row}");
    assert_eq!(row["reason"], "restart from the browser test", "{row}");
    let status = fx
        .api
        .gateway_ready(&node, "the restarted gateway ready")
        .await;
    assert_eq!(status["restart_count_24h"], 1, "{status}");
    for screen in [
        "signin",
        "fleet",
        "enrollment",
        "node",
        "job",
        "jobs",
        "audit",
    ] {
        assert!(
            screenshots.join(format!("{screen}.png")).is_file(),
            "no screenshot of {screen}"
        );
    }
    fx.finish().await;
}
