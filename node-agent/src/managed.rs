//! The conventions of each gateway product the agent manages, behind one trait
//! ([`ManagedGateway`]): what to install and run, its environment, where its configuration lives
//! and in which format, the minimal local configuration it gets, how to tell that it is ready,
//! the names upstream gives its service, and how to read its version.
//!
//! [`OpenClaw`] follows the measured facts and what the agent runs (and the end-to-end tests
//! observe) byte for byte; [`Moltis`] follows the facts file for its configuration, data directory
//! and health endpoint, and upstream's CLI for its run arguments — it is unit-tested only, never
//! run against a live Moltis here. The container commands of both are assumptions from upstream
//! material, not verified against their images. Nothing here does I/O: [`crate::gateway`] does it
//! with these answers.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A configuration file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    /// JSON (OpenClaw reads JSON5, of which JSON is a subset).
    Json,
    /// TOML.
    Toml,
}

/// The directories one managed gateway instance owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayDirs {
    /// Its state (databases, workspace, credentials).
    pub state_dir: PathBuf,
    /// Its configuration.
    pub config_dir: PathBuf,
    /// Its own log files (never a directory shared with other instances).
    pub log_dir: PathBuf,
}

impl GatewayDirs {
    /// The layout under one directory, as the agent uses today (`<root>/gateway-state`): state
    /// and configuration in it, logs in `logs/`.
    pub fn under(root: &Path) -> Self {
        Self {
            state_dir: root.to_path_buf(),
            config_dir: root.to_path_buf(),
            log_dir: root.join("logs"),
        }
    }
}

/// One gateway product's conventions. `Debug` so that options holding a product can be printed.
pub trait ManagedGateway: Send + Sync + std::fmt::Debug {
    /// The product's name (`openclaw`, `moltis`).
    fn product(&self) -> &'static str;
    /// The package to install (the npm package, the Homebrew formula's name).
    fn package(&self) -> &'static str;
    /// The npm package, when the product is published on npm (`None`: installing it with npm
    /// would fetch whatever someone else published under that name).
    fn npm_package(&self) -> Option<&'static str>;
    /// The image repository its container images are published under, when one is known.
    fn image_repository(&self) -> Option<&'static str>;
    /// The executable the package provides.
    fn binary(&self) -> &'static str;
    /// The port its documentation uses.
    fn default_port(&self) -> u16;
    /// The arguments (after the executable) that run the gateway on loopback at `port`.
    fn run_args(&self, port: u16) -> Vec<String>;
    /// The command (executable included) that runs the gateway inside its container image at
    /// `port`. It listens on the container's own interface, because a process bound to the
    /// container's loopback cannot be reached through a published port; the host publishes that
    /// port on its loopback only.
    fn container_args(&self, port: u16) -> Vec<String>;
    /// The environment that points it at its own directories and keeps it from managing its own
    /// service.
    fn environment(&self, dirs: &GatewayDirs) -> Vec<(String, String)>;
    /// Its configuration file.
    fn config_path(&self, dirs: &GatewayDirs) -> PathBuf;
    /// Its configuration's format.
    fn config_format(&self) -> ConfigFormat;
    /// The minimal local configuration, in [`ManagedGateway::config_format`]: loopback only, and
    /// its own log file.
    fn minimal_config(&self, dirs: &GatewayDirs, port: u16) -> String;
    /// The unauthenticated path that answers whether it is ready to serve.
    fn readiness_path(&self) -> &'static str;
    /// Whether a response to [`ManagedGateway::readiness_path`] means ready. The body is raw: it
    /// may still carry chunked transfer-encoding framing. A 200 that is not the product's JSON
    /// (an HTML page from a catch-all route) is not ready.
    fn judge_ready(&self, status: u16, body: &str) -> bool;
    /// The systemd unit upstream's own service installer writes.
    fn upstream_systemd_unit(&self) -> &'static str;
    /// The launchd label upstream's own service installer uses.
    fn upstream_launchd_label(&self) -> &'static str;
    /// Exit statuses after which restarting cannot help.
    fn restart_prevent_exit_statuses(&self) -> Vec<u8>;
    /// The argv that prints its version, given the argv that runs it (`[node, script]` or
    /// `[binary]`).
    fn version_argv(&self, command: &[String]) -> Vec<String>;
    /// The version in that command's output.
    fn parse_version(&self, output: &str) -> Option<String>;
}

/// The product named `name`.
pub fn by_name(name: &str) -> Result<&'static dyn ManagedGateway, String> {
    match name {
        "openclaw" => Ok(&OpenClaw),
        "moltis" => Ok(&Moltis),
        other => Err(format!(
            "unknown gateway product {other:?} (openclaw or moltis)"
        )),
    }
}

/// OpenClaw (npm package `openclaw`).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenClaw;

impl ManagedGateway for OpenClaw {
    fn product(&self) -> &'static str {
        "openclaw"
    }

    fn package(&self) -> &'static str {
        "openclaw"
    }

    fn npm_package(&self) -> Option<&'static str> {
        Some("openclaw")
    }

    fn image_repository(&self) -> Option<&'static str> {
        Some(crate::methods::OPENCLAW_IMAGE_REPOSITORY)
    }

    fn binary(&self) -> &'static str {
        "openclaw"
    }

    fn default_port(&self) -> u16 {
        18789
    }

    fn run_args(&self, port: u16) -> Vec<String> {
        [
            "gateway",
            "run",
            "--bind",
            "loopback",
            "--port",
            &port.to_string(),
            "--allow-unconfigured",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    fn container_args(&self, port: u16) -> Vec<String> {
        // Upstream's compose file runs the image's `dist/index.js` from its working directory,
        // bound to `lan` (every interface of the container). Not verified against the image here.
        [
            "node",
            "dist/index.js",
            "gateway",
            "run",
            "--bind",
            "lan",
            "--port",
            &port.to_string(),
            "--allow-unconfigured",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    fn environment(&self, dirs: &GatewayDirs) -> Vec<(String, String)> {
        vec![
            (
                "OPENCLAW_STATE_DIR".into(),
                dirs.state_dir.display().to_string(),
            ),
            (
                "OPENCLAW_CONFIG_PATH".into(),
                self.config_path(dirs).display().to_string(),
            ),
            // Its doctor must not fight the service manager the agent chose.
            ("OPENCLAW_SERVICE_REPAIR_POLICY".into(), "external".into()),
        ]
    }

    fn config_path(&self, dirs: &GatewayDirs) -> PathBuf {
        dirs.config_dir.join("openclaw.json")
    }

    fn config_format(&self) -> ConfigFormat {
        ConfigFormat::Json
    }

    fn minimal_config(&self, dirs: &GatewayDirs, _port: u16) -> String {
        // Local mode (so it runs without onboarding) and a log file of its own: without
        // `logging.file` every instance on the host writes /tmp/openclaw/openclaw-DATE.log.
        // Bind and port are on the command line.
        // Compact, without a trailing newline: byte for byte what the agent has always written.
        serde_json::json!({
            "gateway": { "mode": "local" },
            "logging": { "file": dirs.log_dir.join("openclaw.log") },
        })
        .to_string()
    }

    fn readiness_path(&self) -> &'static str {
        "/readyz"
    }

    fn judge_ready(&self, status: u16, body: &str) -> bool {
        status == 200 && json_body(body).is_some_and(|v| v.get("ready") == Some(&Value::Bool(true)))
    }

    fn upstream_systemd_unit(&self) -> &'static str {
        "openclaw-gateway.service"
    }

    fn upstream_launchd_label(&self) -> &'static str {
        "ai.openclaw.gateway"
    }

    fn restart_prevent_exit_statuses(&self) -> Vec<u8> {
        // "Another gateway already owns this state directory" under a supervisor.
        vec![78]
    }

    fn version_argv(&self, command: &[String]) -> Vec<String> {
        with_version_flag(command)
    }

    fn parse_version(&self, output: &str) -> Option<String> {
        first_version(output)
    }
}

/// Moltis (the Rust rewrite). Installed from GitHub releases, Homebrew, snap or its image; the
/// agent supports its configuration and health probe.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moltis;

impl ManagedGateway for Moltis {
    fn product(&self) -> &'static str {
        "moltis"
    }

    fn package(&self) -> &'static str {
        "moltis"
    }

    fn npm_package(&self) -> Option<&'static str> {
        // Moltis ships as release binaries, a Homebrew formula, a snap and an image (facts file).
        None
    }

    fn image_repository(&self) -> Option<&'static str> {
        // Its image's exact name is not in the measured facts: an operator names it.
        None
    }

    fn binary(&self) -> &'static str {
        "moltis"
    }

    fn default_port(&self) -> u16 {
        13131
    }

    fn run_args(&self, port: u16) -> Vec<String> {
        [
            "gateway",
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    fn container_args(&self, port: u16) -> Vec<String> {
        // Assumes the image puts `moltis` on PATH; not verified against an image here.
        [
            "moltis",
            "gateway",
            "--bind",
            "0.0.0.0",
            "--port",
            &port.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    fn environment(&self, dirs: &GatewayDirs) -> Vec<(String, String)> {
        vec![
            (
                "MOLTIS_CONFIG_DIR".into(),
                dirs.config_dir.display().to_string(),
            ),
            (
                "MOLTIS_DATA_DIR".into(),
                dirs.state_dir.display().to_string(),
            ),
            // TLS is on by default; the agent probes plain HTTP on loopback. The variable (rather
            // than `--no-tls`) is harmless for a build without TLS, where the flag is unknown.
            ("MOLTIS_NO_TLS".into(), "true".into()),
        ]
    }

    fn config_path(&self, dirs: &GatewayDirs) -> PathBuf {
        dirs.config_dir.join("moltis.toml")
    }

    fn config_format(&self) -> ConfigFormat {
        ConfigFormat::Toml
    }

    fn minimal_config(&self, _dirs: &GatewayDirs, port: u16) -> String {
        // Its logs (`logs.jsonl`) already live in its own data directory.
        format!(
            "# Written by moltops-agent: loopback only, plain HTTP on loopback.\n\
             [server]\n\
             bind = {}\n\
             port = {port}\n\
             \n\
             [tls]\n\
             enabled = false\n",
            toml_string("127.0.0.1")
        )
    }

    fn readiness_path(&self) -> &'static str {
        "/health"
    }

    fn judge_ready(&self, status: u16, body: &str) -> bool {
        status == 200
            && json_body(body)
                .is_some_and(|v| v.get("status").and_then(Value::as_str) == Some("ok"))
    }

    fn upstream_systemd_unit(&self) -> &'static str {
        "moltis.service"
    }

    fn upstream_launchd_label(&self) -> &'static str {
        "org.moltis.gateway"
    }

    fn restart_prevent_exit_statuses(&self) -> Vec<u8> {
        Vec::new()
    }

    fn version_argv(&self, command: &[String]) -> Vec<String> {
        with_version_flag(command)
    }

    fn parse_version(&self, output: &str) -> Option<String> {
        first_version(output)
    }
}

fn with_version_flag(command: &[String]) -> Vec<String> {
    let mut argv = command.to_vec();
    argv.push("--version".into());
    argv
}

/// The first word of `output` that is a version (`2026.9.1`, `v0.9.3`, `2026.9.1-beta.2`,
/// optionally in parentheses or followed by punctuation), without a leading `v`.
pub fn first_version(output: &str) -> Option<String> {
    output.split_whitespace().find_map(|word| {
        let word = word
            .trim_matches(|c: char| matches!(c, '(' | ')' | ',' | ';' | '"' | '\''))
            .trim_start_matches('v');
        crate::methods::ReleaseVersion::parse(word)
            .ok()
            .map(|v| v.as_str().to_owned())
    })
}

/// A TOML basic string: quoted, with `\`, `"` and control characters escaped.
pub fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The JSON object a response body carries: the whole body, trimmed, or — when it is framed with
/// chunked transfer-encoding — the de-chunked body. Anything that is not entirely one JSON object
/// (an HTML page, even one with JSON inside a script) is `None`.
pub fn json_body(body: &str) -> Option<Value> {
    let object = |text: &str| {
        serde_json::from_str::<Value>(text.trim())
            .ok()
            .filter(Value::is_object)
    };
    object(body).or_else(|| object(&dechunk(body)?))
}

/// Decodes a body framed with HTTP/1.1 chunked transfer-encoding (`<hex size>[;ext]\r\n<data>\r\n`
/// … `0\r\n\r\n`). A body cut off after whole chunks decodes to what arrived; one that is not
/// chunked at all is `None`.
pub fn dechunk(body: &str) -> Option<String> {
    let mut rest = body.as_bytes();
    let mut out: Vec<u8> = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_line = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size_hex = size_line.split(';').next()?.trim();
        if size_hex.is_empty() || !size_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        let chunk = rest.get(..size)?;
        out.extend_from_slice(chunk);
        rest = &rest[size..];
        match rest.strip_prefix(b"\r\n") {
            Some(after) => rest = after,
            None if rest.is_empty() => break,
            None => return None,
        }
        if rest.is_empty() {
            break;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames `parts` as chunks, the way a server streams them.
    fn chunked(parts: &[&str]) -> String {
        let mut body = String::new();
        for part in parts {
            body.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
        }
        body.push_str("0\r\n\r\n");
        body
    }

    const OPENCLAW_READY: &str =
        r#"{"ready":true,"failing":[],"checks":{"config":"ok","channels":"ok"}}"#;
    const CATCH_ALL_HTML: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
        <title>OpenClaw</title><script>window.__OPENCLAW__={\"ready\":true,\"status\":\"ok\"}</script>\
        </head><body><div id=\"app\"></div></body></html>\n";

    #[test]
    fn openclaw_is_ready_only_on_its_own_json_saying_so() {
        let check = |status: u16, body: &str, expected: bool| {
            assert_eq!(
                OpenClaw.judge_ready(status, body),
                expected,
                "{status} {body:?}"
            );
        };
        check(200, OPENCLAW_READY, true);
        check(200, &format!("{OPENCLAW_READY}\n"), true);
        check(200, &chunked(&[OPENCLAW_READY]), true);
        // Split mid-token across chunks, with a chunk extension on one size line.
        check(
            200,
            &chunked(&[r#"{"ready":tr"#, r#"ue,"failing":[]}"#]),
            true,
        );
        check(
            200,
            "d;ext=1\r\n{\"ready\":true\r\n1\r\n}\r\n0\r\n\r\n",
            true,
        );
        // Cut off after the data, before the last chunk.
        check(200, "d\r\n{\"ready\":true\r\n1\r\n}\r\n", true);
        // Not ready.
        check(503, r#"{"ready":false,"failing":["channels"]}"#, false);
        check(200, r#"{"ready":false,"failing":["channels"]}"#, false);
        check(503, OPENCLAW_READY, false);
        check(200, r#"{"ready":"true"}"#, false);
        check(200, r#"{"ok":true,"status":"live"}"#, false);
        check(200, "[true]", false);
        check(200, "", false);
        // Unknown paths answer the UI's HTML with 200, JSON-looking script and all.
        check(200, CATCH_ALL_HTML, false);
        check(
            200,
            &chunked(&[&CATCH_ALL_HTML[..40], &CATCH_ALL_HTML[40..]]),
            false,
        );
        // A truncated chunk is not a body.
        check(200, "40\r\n{\"ready\":true}\r\n", false);
    }

    #[test]
    fn moltis_is_ready_on_status_ok() {
        let check = |status: u16, body: &str, expected: bool| {
            assert_eq!(
                Moltis.judge_ready(status, body),
                expected,
                "{status} {body:?}"
            );
        };
        let healthy = r#"{"status":"ok","version":"0.9.3","uptime_secs":12}"#;
        check(200, healthy, true);
        check(200, &chunked(&[&healthy[..7], &healthy[7..]]), true);
        check(200, r#"{"status":"degraded","version":"0.9.3"}"#, false);
        check(503, healthy, false);
        check(200, CATCH_ALL_HTML, false);
        check(200, "ok", false);
    }

    #[test]
    fn dechunking() {
        assert_eq!(dechunk(&chunked(&["ab", "cdé"])), Some("abcdé".into()));
        assert_eq!(dechunk("0\r\n\r\n"), Some(String::new()));
        assert_eq!(dechunk("{\"ready\":true}"), None);
        assert_eq!(dechunk("zz\r\nab\r\n"), None);
        assert_eq!(dechunk("2\r\nabX"), None);
    }

    #[test]
    fn openclaw_conventions() {
        let dirs = GatewayDirs::under(Path::new("/var/lib/moltops/gateway-state"));
        assert_eq!(OpenClaw.package(), "openclaw");
        assert_eq!(OpenClaw.binary(), "openclaw");
        assert_eq!(OpenClaw.default_port(), 18789);
        assert_eq!(
            OpenClaw.run_args(18789),
            [
                "gateway",
                "run",
                "--bind",
                "loopback",
                "--port",
                "18789",
                "--allow-unconfigured"
            ]
        );
        assert_eq!(
            OpenClaw.environment(&dirs),
            [
                (
                    "OPENCLAW_STATE_DIR".to_owned(),
                    "/var/lib/moltops/gateway-state".to_owned()
                ),
                (
                    "OPENCLAW_CONFIG_PATH".to_owned(),
                    "/var/lib/moltops/gateway-state/openclaw.json".to_owned()
                ),
                (
                    "OPENCLAW_SERVICE_REPAIR_POLICY".to_owned(),
                    "external".to_owned()
                ),
            ]
        );
        assert_eq!(OpenClaw.config_format(), ConfigFormat::Json);
        // Byte for byte what the agent's gateway has always written (compact, no newline).
        assert_eq!(
            OpenClaw.minimal_config(&dirs, 18789),
            r#"{"gateway":{"mode":"local"},"logging":{"file":"/var/lib/moltops/gateway-state/logs/openclaw.log"}}"#
        );
        assert_eq!(OpenClaw.npm_package(), Some("openclaw"));
        assert_eq!(
            OpenClaw.image_repository(),
            Some(crate::methods::OPENCLAW_IMAGE_REPOSITORY)
        );
        assert_eq!(
            OpenClaw.container_args(18789),
            [
                "node",
                "dist/index.js",
                "gateway",
                "run",
                "--bind",
                "lan",
                "--port",
                "18789",
                "--allow-unconfigured"
            ]
        );
        assert_eq!(OpenClaw.readiness_path(), "/readyz");
        assert_eq!(OpenClaw.upstream_systemd_unit(), "openclaw-gateway.service");
        assert_eq!(OpenClaw.upstream_launchd_label(), "ai.openclaw.gateway");
        assert_eq!(OpenClaw.restart_prevent_exit_statuses(), [78]);
    }

    #[test]
    fn moltis_conventions() {
        let dirs = GatewayDirs {
            state_dir: PathBuf::from("/var/lib/moltops/moltis-data"),
            config_dir: PathBuf::from("/var/lib/moltops/moltis-config"),
            log_dir: PathBuf::from("/var/lib/moltops/moltis-data"),
        };
        assert_eq!(Moltis.default_port(), 13131);
        assert_eq!(
            Moltis.run_args(13131),
            ["gateway", "--bind", "127.0.0.1", "--port", "13131"]
        );
        assert_eq!(
            Moltis.config_path(&dirs),
            Path::new("/var/lib/moltops/moltis-config/moltis.toml")
        );
        assert_eq!(Moltis.config_format(), ConfigFormat::Toml);
        assert_eq!(
            Moltis.environment(&dirs),
            [
                (
                    "MOLTIS_CONFIG_DIR".to_owned(),
                    "/var/lib/moltops/moltis-config".to_owned()
                ),
                (
                    "MOLTIS_DATA_DIR".to_owned(),
                    "/var/lib/moltops/moltis-data".to_owned()
                ),
                ("MOLTIS_NO_TLS".to_owned(), "true".to_owned()),
            ]
        );
        assert_eq!(
            Moltis.minimal_config(&dirs, 13131),
            "# Written by moltops-agent: loopback only, plain HTTP on loopback.\n[server]\nbind = \"127.0.0.1\"\nport = 13131\n\n[tls]\nenabled = false\n"
        );
        assert_eq!(Moltis.readiness_path(), "/health");
        // Not on npm, and no image name in the facts: an operator names the image.
        assert_eq!(Moltis.npm_package(), None);
        assert_eq!(Moltis.image_repository(), None);
        assert_eq!(
            Moltis.container_args(13131),
            ["moltis", "gateway", "--bind", "0.0.0.0", "--port", "13131"]
        );
        assert_eq!(Moltis.upstream_systemd_unit(), "moltis.service");
        assert_eq!(Moltis.upstream_launchd_label(), "org.moltis.gateway");
        assert!(Moltis.restart_prevent_exit_statuses().is_empty());
    }

    #[test]
    fn versions_are_read_from_either_cli() {
        let command = vec![
            "/opt/node".to_owned(),
            "/opt/openclaw/openclaw.mjs".to_owned(),
        ];
        assert_eq!(
            OpenClaw.version_argv(&command),
            ["/opt/node", "/opt/openclaw/openclaw.mjs", "--version"]
        );
        assert_eq!(
            Moltis.version_argv(&["moltis".to_owned()]),
            ["moltis", "--version"]
        );
        let check = |output: &str, expected: Option<&str>| {
            assert_eq!(
                OpenClaw.parse_version(output).as_deref(),
                expected,
                "{output:?}"
            );
        };
        check("2026.9.1\n", Some("2026.9.1"));
        check("OpenClaw 2026.9.6 (3f2a9c1)\n", Some("2026.9.6"));
        check("openclaw v2026.9.1-beta.2\n", Some("2026.9.1-beta.2"));
        check("moltis 0.9.3\n", Some("0.9.3"));
        check("(2026.9.1)", Some("2026.9.1"));
        check("node:sqlite is unavailable\n", None);
        check("", None);
        assert_eq!(
            Moltis.parse_version("moltis 20260719.01\n").as_deref(),
            Some("20260719.01")
        );
    }

    #[test]
    fn products_by_name_and_toml_strings() {
        assert_eq!(by_name("openclaw").map(|g| g.product()), Ok("openclaw"));
        assert_eq!(by_name("moltis").map(|g| g.product()), Ok("moltis"));
        assert_eq!(
            by_name("clawdbot").map(|g| g.product()),
            Err("unknown gateway product \"clawdbot\" (openclaw or moltis)".into())
        );
        assert_eq!(toml_string(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(toml_string("line\nbreak\u{1}"), r#""line\nbreak\u0001""#);
    }
}
