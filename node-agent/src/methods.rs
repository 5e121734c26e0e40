//! Install methods other than npm ([`crate::install`]): a docker image and a Homebrew formula.
//!
//! Each method turns a request (a channel or an exact version) into a plan of argv vectors, runs
//! it through an injected [`Runner`], and parses what the CLI printed. What the request names is
//! validated strictly first ([`Wanted::from_request`]): only a known channel or a plain release
//! version ever reaches an argv, so nothing from the wire can become an option or a second word.
#![deny(missing_docs)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::runner::{HostView, Runner, find_program, run_checked};

/// A release channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The current stable release (npm dist-tag `latest`).
    Stable,
    /// The current beta.
    Beta,
    /// The current nightly build.
    Nightly,
}

impl Channel {
    /// The channel's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Stable => "stable",
            Channel::Beta => "beta",
            Channel::Nightly => "nightly",
        }
    }

    /// The image tag that follows the channel: `latest`, `beta`, `main` (OpenClaw publishes
    /// `latest`, `main` and one tag per version; `beta` is assumed to follow npm's dist-tag).
    pub fn docker_tag(self) -> &'static str {
        match self {
            Channel::Stable => "latest",
            Channel::Beta => "beta",
            Channel::Nightly => "main",
        }
    }
}

impl FromStr for Channel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stable" => Ok(Channel::Stable),
            "beta" => Ok(Channel::Beta),
            "nightly" => Ok(Channel::Nightly),
            other => Err(format!(
                "unknown channel {other:?} (stable, beta or nightly)"
            )),
        }
    }
}

/// A release version, checked strictly: two to four dot-separated numbers of up to ten digits
/// (semver `1.2.3`, CalVer `2026.9.1`, date tags `20260719.01`), optionally followed by `-` and a
/// pre-release of dot-separated letters, digits and hyphens (`-beta.2`); at most 64 characters.
/// No `v` prefix, no build metadata, nothing else: valid as an npm version, an image tag and a
/// command-line word.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReleaseVersion(String);

impl ReleaseVersion {
    /// Checks `text` and wraps it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "invalid version {text:?}: expected numbers like 2026.9.1 or 1.2.3, optionally \
                 with a pre-release like -beta.2"
            )
        };
        if text.is_empty() || text.len() > 64 {
            return Err(invalid());
        }
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (text, None),
        };
        let numbers: Vec<&str> = core.split('.').collect();
        let numbers_ok = (2..=4).contains(&numbers.len())
            && numbers
                .iter()
                .all(|n| (1..=10).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()));
        let pre_ok = pre.is_none_or(|pre| {
            pre.split('.').all(|id| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        });
        if numbers_ok && pre_ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(invalid())
        }
    }

    /// The version as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReleaseVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an install asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// Whatever the channel points at.
    Channel(Channel),
    /// Exactly this version.
    Version(ReleaseVersion),
}

impl Wanted {
    /// From an install request's fields, as the npm method reads them: the version when given,
    /// else the channel, else stable.
    pub fn from_request(channel: &str, version: &str) -> Result<Self, String> {
        if !version.is_empty() {
            return ReleaseVersion::parse(version).map(Wanted::Version);
        }
        if channel.is_empty() {
            return Ok(Wanted::Channel(Channel::Stable));
        }
        channel.parse().map(Wanted::Channel)
    }
}

/// Where OpenClaw's images are published (GitHub Container Registry, tags `latest`, `main` and
/// one per version). Not in the measured facts: an option of [`DockerMethod`], defaulting here.
pub const OPENCLAW_IMAGE_REPOSITORY: &str = "ghcr.io/openclaw/openclaw";

/// An image repository and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `ghcr.io/openclaw/openclaw`.
    pub repository: String,
    /// `2026.9.1`, `latest`, …
    pub tag: String,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

/// Checks an image repository: an optional registry host (with an optional port) and lowercase
/// path components of letters, digits, `.`, `_` and `-`.
pub fn validate_repository(repository: &str) -> Result<(), String> {
    let invalid = || format!("invalid image repository {repository:?}");
    let parts: Vec<&str> = repository.split('/').collect();
    let component = |c: &str| {
        c.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
    };
    let host = |c: &str| {
        let (name, port) = match c.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (c, None),
        };
        name.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
            && port.is_none_or(|p| {
                !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
            })
    };
    let ok = match parts.split_first() {
        Some((first, rest)) if !rest.is_empty() => {
            (host(first) || component(first)) && rest.iter().all(|c| component(c))
        }
        Some((only, _)) => component(only),
        None => false,
    };
    if ok && repository.len() <= 200 {
        Ok(())
    } else {
        Err(invalid())
    }
}

/// Installs a gateway image with the docker CLI: `docker pull`, then the pulled image's id
/// (`docker image inspect --format {{.Id}}`), checked against a pinned one when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerMethod {
    /// The docker program (`docker`, or a path).
    pub docker: String,
    /// The image repository; [`OPENCLAW_IMAGE_REPOSITORY`] by default.
    pub repository: String,
}

impl Default for DockerMethod {
    fn default() -> Self {
        Self {
            docker: "docker".into(),
            repository: OPENCLAW_IMAGE_REPOSITORY.into(),
        }
    }
}

/// The OCI label an image's version is read from, when the image carries it.
pub const VERSION_LABEL: &str = "org.opencontainers.image.version";

/// What a docker install produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerInstalled {
    /// The reference pulled.
    pub image: ImageRef,
    /// The image id (`sha256:…`), what a later run or rollback pins.
    pub id: String,
    /// The version: the one asked for, or the image's version label for a channel.
    pub version: Option<String>,
}

impl DockerMethod {
    /// A method for `repository` (validated), run with the `docker` program.
    pub fn new(docker: &str, repository: &str) -> Result<Self, String> {
        validate_repository(repository)?;
        Ok(Self {
            docker: docker.to_owned(),
            repository: repository.to_owned(),
        })
    }

    /// The image for a request: the version as the tag, or the channel's tag.
    pub fn image_for(&self, wanted: &Wanted) -> ImageRef {
        let tag = match wanted {
            Wanted::Version(version) => version.as_str().to_owned(),
            Wanted::Channel(channel) => channel.docker_tag().to_owned(),
        };
        ImageRef {
            repository: self.repository.clone(),
            tag,
        }
    }

    /// `docker pull IMAGE`.
    pub fn pull_argv(&self, image: &ImageRef) -> Vec<String> {
        vec![self.docker.clone(), "pull".into(), image.to_string()]
    }

    /// `docker image inspect --format {{.Id}} IMAGE`.
    pub fn image_id_argv(&self, image: &ImageRef) -> Vec<String> {
        vec![
            self.docker.clone(),
            "image".into(),
            "inspect".into(),
            "--format".into(),
            "{{.Id}}".into(),
            image.to_string(),
        ]
    }

    /// `docker image inspect --format {{index .Config.Labels "org.opencontainers.image.version"}} IMAGE`.
    pub fn version_label_argv(&self, image: &ImageRef) -> Vec<String> {
        vec![
            self.docker.clone(),
            "image".into(),
            "inspect".into(),
            "--format".into(),
            format!("{{{{index .Config.Labels \"{VERSION_LABEL}\"}}}}"),
            image.to_string(),
        ]
    }

    /// The commands an install runs, in order.
    pub fn plan(&self, wanted: &Wanted) -> Result<Vec<Vec<String>>, String> {
        validate_repository(&self.repository)?;
        let image = self.image_for(wanted);
        Ok(vec![
            self.pull_argv(&image),
            self.image_id_argv(&image),
            self.version_label_argv(&image),
        ])
    }

    /// Pulls the image and reads its id and version. With `expected_id` (a pinned `sha256:…`),
    /// an image whose id differs is refused: the registry served something else than was
    /// approved. An exact version whose image labels another version is refused too.
    pub async fn install(
        &self,
        runner: &dyn Runner,
        wanted: &Wanted,
        expected_id: Option<&str>,
    ) -> Result<DockerInstalled, String> {
        if let Some(expected) = expected_id {
            parse_image_id(expected)
                .map_err(|_| format!("the pinned image id {expected:?} is not sha256:<64 hex>"))?;
        }
        let [pull, id, label] = <[Vec<String>; 3]>::try_from(self.plan(wanted)?)
            .map_err(|_| "the docker plan has an unexpected shape".to_owned())?;
        let image = self.image_for(wanted);
        run_checked(runner, &pull).await?;
        let id = parse_image_id(&run_checked(runner, &id).await?)?;
        if let Some(expected) = expected_id
            && id != expected
        {
            return Err(format!(
                "{image} has id {id}, but {expected} was approved: refusing it"
            ));
        }
        // The label is information: an image without it (or an inspect that fails) has none.
        let labelled = run_checked(runner, &label)
            .await
            .ok()
            .and_then(|out| parse_version_label(&out));
        let version = match wanted {
            Wanted::Version(v) => {
                if let Some(labelled) = labelled.as_deref().filter(|l| *l != v.as_str()) {
                    return Err(format!(
                        "{image} is labelled version {labelled}, not {v}: refusing it"
                    ));
                }
                Some(v.as_str().to_owned())
            }
            Wanted::Channel(_) => labelled,
        };
        Ok(DockerInstalled { image, id, version })
    }
}

/// Parses `docker image inspect --format {{.Id}}` output: `sha256:` and 64 lowercase hex digits.
pub fn parse_image_id(stdout: &str) -> Result<String, String> {
    let id = stdout.trim();
    let hex = id.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(id.to_owned())
    } else {
        Err(format!(
            "docker printed {id:?} where an image id (sha256:…) was expected"
        ))
    }
}

/// Parses the version label's output: a valid [`ReleaseVersion`], or nothing (Go templates print
/// an empty string or `<no value>` for a missing label).
pub fn parse_version_label(stdout: &str) -> Option<String> {
    ReleaseVersion::parse(stdout.trim())
        .ok()
        .map(|v| v.as_str().to_owned())
}

/// The Homebrew formula the OpenClaw gateway is installed from (an option of [`BrewMethod`]).
pub const OPENCLAW_FORMULA: &str = "openclaw";

/// Where Homebrew lives on macOS (Apple silicon, then Intel) and on Linux (linuxbrew's default).
const MACOS_BREWS: [&str; 2] = ["/opt/homebrew/bin/brew", "/usr/local/bin/brew"];
const LINUXBREW: &str = "/home/linuxbrew/.linuxbrew/bin/brew";

/// Checks a formula name: `name` or `user/tap/name`, each part lowercase letters, digits and
/// `@ . _ + -`, starting with a letter or digit.
pub fn validate_formula(formula: &str) -> Result<(), String> {
    let parts: Vec<&str> = formula.split('/').collect();
    let part_ok = |p: &&str| {
        p.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && p.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'@' | b'.' | b'_' | b'+' | b'-')
            })
    };
    if matches!(parts.len(), 1 | 3) && parts.iter().all(part_ok) && formula.len() <= 128 {
        Ok(())
    } else {
        Err(format!("invalid Homebrew formula {formula:?}"))
    }
}

/// Installs the gateway with Homebrew: `brew install` or `brew upgrade` of one formula. Homebrew
/// installs only the formula's current stable version, so a request for another version (or for
/// a beta or nightly) is refused before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrewMethod {
    /// The `brew` program found.
    pub brew: PathBuf,
    /// The formula (`openclaw`, or `user/tap/name`).
    pub formula: String,
}

/// What a Homebrew install produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrewInstalled {
    /// The version now installed.
    pub version: String,
    /// What was done: `installed`, `upgraded`, or `already installed`.
    pub action: &'static str,
}

impl BrewMethod {
    /// Finds Homebrew on this host for `formula`. Refused on a non-macOS host unless linuxbrew is
    /// present, and when the agent runs as root (Homebrew refuses root itself).
    pub fn locate(host: &dyn HostView, formula: &str) -> Result<Self, String> {
        validate_formula(formula)?;
        if host.effective_uid() == 0 {
            return Err(
                "Homebrew refuses to run as root: run the agent as the user who owns the \
                 Homebrew prefix, or use the npm method"
                    .to_owned(),
            );
        }
        let os = host.os();
        let home_brew = host
            .env("HOME")
            .filter(|h| h.starts_with('/'))
            .map(|h| Path::new(&h).join(".linuxbrew/bin/brew"));
        let brew = match os.as_str() {
            "macos" => MACOS_BREWS
                .iter()
                .map(PathBuf::from)
                .find(|p| host.is_executable(p))
                .or_else(|| find_program(host, "brew")),
            "linux" => std::iter::once(PathBuf::from(LINUXBREW))
                .chain(home_brew)
                .find(|p| host.is_executable(p))
                .or_else(|| find_program(host, "brew")),
            _ => None,
        };
        match brew {
            Some(brew) => Ok(Self {
                brew,
                formula: formula.to_owned(),
            }),
            None if os == "macos" => Err(
                "Homebrew is not installed on this host (looked in /opt/homebrew/bin, \
                 /usr/local/bin and on PATH)"
                    .to_owned(),
            ),
            None if os == "linux" => Err(format!(
                "Homebrew is a macOS install method, and this linux host has no Homebrew \
                 (linuxbrew): looked for {LINUXBREW}, ~/.linuxbrew/bin/brew and brew on PATH"
            )),
            None => Err(format!(
                "Homebrew is a macOS install method; this host runs {os}"
            )),
        }
    }

    fn command(&self, args: &[&str]) -> Vec<String> {
        std::iter::once(self.brew.display().to_string())
            .chain(args.iter().map(|a| (*a).to_owned()))
            .collect()
    }

    /// `brew list --versions FORMULA` (exit 1 when it is not installed).
    pub fn list_versions_argv(&self) -> Vec<String> {
        self.command(&["list", "--versions", &self.formula])
    }

    /// `brew info --json=v2 FORMULA`: the formula's current stable version.
    pub fn info_argv(&self) -> Vec<String> {
        self.command(&["info", "--json=v2", &self.formula])
    }

    /// `brew install FORMULA`.
    pub fn install_argv(&self) -> Vec<String> {
        self.command(&["install", &self.formula])
    }

    /// `brew upgrade FORMULA`.
    pub fn upgrade_argv(&self) -> Vec<String> {
        self.command(&["upgrade", &self.formula])
    }

    /// The formula's short name, as `brew list --versions` prints it.
    fn short_name(&self) -> &str {
        self.formula.rsplit('/').next().unwrap_or(&self.formula)
    }

    /// The commands an install runs, given what is installed and what the formula offers:
    /// nothing when that version is already installed, else install or upgrade, then a check.
    pub fn plan(&self, installed: &[String], stable: &str) -> Vec<Vec<String>> {
        if installed.iter().any(|v| same_version(v, stable)) {
            Vec::new()
        } else if installed.is_empty() {
            vec![self.install_argv(), self.list_versions_argv()]
        } else {
            vec![self.upgrade_argv(), self.list_versions_argv()]
        }
    }

    /// Installs or upgrades to the formula's stable version, refusing a request it cannot meet.
    pub async fn install(
        &self,
        runner: &dyn Runner,
        wanted: &Wanted,
    ) -> Result<BrewInstalled, String> {
        if let Wanted::Channel(channel @ (Channel::Beta | Channel::Nightly)) = wanted {
            return Err(format!(
                "Homebrew installs only the formula's stable version, not {}: use the npm or \
                 docker method",
                channel.as_str()
            ));
        }
        let listed = runner.run(&self.list_versions_argv()).await?;
        let installed = if listed.success() {
            parse_list_versions(self.short_name(), &listed.stdout)
        } else {
            Vec::new()
        };
        let stable = parse_info_stable(&run_checked(runner, &self.info_argv()).await?)?;
        if let Wanted::Version(v) = wanted
            && !same_version(&stable, v.as_str())
        {
            return Err(format!(
                "Homebrew's {} formula is at {stable}, not {v}, and Homebrew cannot install \
                 another version: use the npm or docker method",
                self.formula
            ));
        }
        let plan = self.plan(&installed, &stable);
        let Some((change, check)) = plan.split_first() else {
            return Ok(BrewInstalled {
                version: stable,
                action: "already installed",
            });
        };
        let action = if installed.is_empty() {
            "installed"
        } else {
            "upgraded"
        };
        run_checked(runner, change).await?;
        let mut now = Vec::new();
        for argv in check {
            now = parse_list_versions(self.short_name(), &run_checked(runner, argv).await?);
        }
        if !now.iter().any(|v| same_version(v, &stable)) {
            return Err(format!(
                "brew reported success, but {} {stable} is not installed (it lists {})",
                self.formula,
                if now.is_empty() {
                    "nothing".to_owned()
                } else {
                    now.join(", ")
                }
            ));
        }
        Ok(BrewInstalled {
            version: stable,
            action,
        })
    }
}

/// Two Homebrew versions are the same release when they differ only by a formula revision
/// (`2026.9.1_1` is `2026.9.1` rebuilt).
fn same_version(a: &str, b: &str) -> bool {
    let release = |v: &str| v.split_once('_').map_or(v, |(r, _)| r).to_owned();
    release(a) == release(b)
}

/// Parses `brew list --versions NAME` output (`openclaw 2026.9.1 2026.8.2`): the versions
/// installed side by side, or none when the line is for another name or empty.
pub fn parse_list_versions(name: &str, stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(name)).then(|| words.map(str::to_owned).collect::<Vec<_>>())
        })
        .flatten()
        .collect()
}

/// Parses `brew info --json=v2 FORMULA` output: the formula's stable version.
pub fn parse_info_stable(json: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("brew info did not print JSON: {e}"))?;
    value["formulae"][0]["versions"]["stable"]
        .as_str()
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| "brew info names no stable version for the formula".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::CommandOutput;
    use crate::runner::fake::{FakeHost, FakeRunner};

    #[test]
    fn versions_are_checked_strictly() {
        for good in [
            "2026.9.1",
            "2026.9.6",
            "1.2.3",
            "2026.9.1-beta.2",
            "0.1.0",
            "20260719.01",
            "1.2.3.4",
            "1.0.0-rc-1",
        ] {
            assert_eq!(
                ReleaseVersion::parse(good).map(|v| v.to_string()),
                Ok(good.to_owned())
            );
        }
        for bad in [
            "",
            "v2026.9.1",
            "2026",
            "2026.9.1 --registry=http://evil",
            "--force",
            "2026.9.1;rm",
            "2026.9.1+build",
            "2026..1",
            "2026.9.1-",
            "2026.9.1-beta..2",
            "1.2.3.4.5",
            "latest",
            "2026.9.1\n",
            "12345678901.1.1",
            "1.2.3-ü",
        ] {
            assert!(ReleaseVersion::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            ReleaseVersion::parse("$(id)").unwrap_err(),
            "invalid version \"$(id)\": expected numbers like 2026.9.1 or 1.2.3, optionally with a pre-release like -beta.2"
        );
    }

    #[test]
    fn requests_become_a_channel_or_a_version() {
        let check = |channel: &str, version: &str, expected: Result<Wanted, &str>| {
            assert_eq!(
                Wanted::from_request(channel, version),
                expected.map_err(str::to_owned)
            );
        };
        check("", "", Ok(Wanted::Channel(Channel::Stable)));
        check("beta", "", Ok(Wanted::Channel(Channel::Beta)));
        check("nightly", "", Ok(Wanted::Channel(Channel::Nightly)));
        check(
            "beta",
            "2026.9.1",
            Ok(Wanted::Version(ReleaseVersion::parse("2026.9.1").unwrap())),
        );
        check(
            "latest; rm -rf /",
            "",
            Err("unknown channel \"latest; rm -rf /\" (stable, beta or nightly)"),
        );
        assert!(Wanted::from_request("stable", "next").is_err());
    }

    #[test]
    fn images_follow_the_channel_or_the_version() {
        let docker = DockerMethod::default();
        let stable = docker.image_for(&Wanted::Channel(Channel::Stable));
        assert_eq!(stable.to_string(), "ghcr.io/openclaw/openclaw:latest");
        assert_eq!(
            docker
                .image_for(&Wanted::Channel(Channel::Nightly))
                .to_string(),
            "ghcr.io/openclaw/openclaw:main"
        );
        let exact = Wanted::Version(ReleaseVersion::parse("2026.9.1").unwrap());
        assert_eq!(
            docker.plan(&exact).unwrap(),
            vec![
                vec!["docker", "pull", "ghcr.io/openclaw/openclaw:2026.9.1"],
                vec![
                    "docker",
                    "image",
                    "inspect",
                    "--format",
                    "{{.Id}}",
                    "ghcr.io/openclaw/openclaw:2026.9.1"
                ],
                vec![
                    "docker",
                    "image",
                    "inspect",
                    "--format",
                    "{{index .Config.Labels \"org.opencontainers.image.version\"}}",
                    "ghcr.io/openclaw/openclaw:2026.9.1"
                ],
            ]
        );
        assert!(DockerMethod::new("docker", "registry.example.com:5000/team/openclaw").is_ok());
        assert!(DockerMethod::new("docker", "localhost/openclaw").is_ok());
        for bad in [
            "",
            "--privileged",
            "Ghcr.io/OpenClaw/OpenClaw",
            "a//b",
            "repo:tag",
            "repo@sha256:x",
            "a b",
        ] {
            assert!(
                DockerMethod::new("docker", bad).is_err(),
                "{bad:?} was accepted"
            );
        }
        // A repository set by hand is checked again before anything runs.
        let odd = DockerMethod {
            repository: "--privileged".into(),
            ..DockerMethod::default()
        };
        assert!(odd.plan(&exact).is_err());
    }

    const ID: &str = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";

    #[test]
    fn image_ids_and_labels_are_parsed() {
        assert_eq!(parse_image_id(&format!("{ID}\n")), Ok(ID.to_owned()));
        assert!(parse_image_id("").is_err());
        assert!(parse_image_id("sha256:abc").is_err());
        assert!(parse_image_id(&ID.to_uppercase()).is_err());
        assert_eq!(parse_version_label("2026.9.1\n"), Some("2026.9.1".into()));
        assert_eq!(parse_version_label("<no value>\n"), None);
        assert_eq!(parse_version_label("\n"), None);
    }

    #[tokio::test]
    async fn a_docker_install_pulls_and_checks_the_pinned_id() {
        let exact = Wanted::Version(ReleaseVersion::parse("2026.9.1").unwrap());
        let runner = FakeRunner::new()
            .then_ok("2026.9.1: Pulling from openclaw/openclaw\nStatus: Downloaded newer image\n")
            .then_ok(&format!("{ID}\n"))
            .then_ok("2026.9.1\n");
        let installed = DockerMethod::default()
            .install(&runner, &exact, Some(ID))
            .await
            .unwrap();
        assert_eq!(installed.id, ID);
        assert_eq!(installed.version.as_deref(), Some("2026.9.1"));
        assert_eq!(
            installed.image.to_string(),
            "ghcr.io/openclaw/openclaw:2026.9.1"
        );
        assert_eq!(
            runner.calls(),
            DockerMethod::default().plan(&exact).unwrap()
        );

        // Another id than the approved one is refused.
        let other = ID.replace("4f53", "0000");
        let runner = FakeRunner::new().then_ok("").then_ok(&other);
        let error = DockerMethod::default()
            .install(&runner, &exact, Some(ID))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            format!(
                "ghcr.io/openclaw/openclaw:2026.9.1 has id {other}, but {ID} was approved: refusing it"
            )
        );
        // A label that contradicts the version asked for is refused.
        let runner = FakeRunner::new()
            .then_ok("")
            .then_ok(ID)
            .then_ok("2026.9.2");
        assert!(
            DockerMethod::default()
                .install(&runner, &exact, None)
                .await
                .unwrap_err()
                .contains("labelled version 2026.9.2, not 2026.9.1")
        );
        // A channel takes its version from the label, and lives without one.
        let runner = FakeRunner::new()
            .then_ok("")
            .then_ok(ID)
            .then(CommandOutput::failed(1, "template: :1: error"));
        let installed = DockerMethod::default()
            .install(&runner, &Wanted::Channel(Channel::Stable), None)
            .await
            .unwrap();
        assert_eq!(installed.version, None);
        // A failed pull stops everything.
        let runner = FakeRunner::new().then(CommandOutput::failed(
            1,
            "Error response from daemon: manifest unknown",
        ));
        assert_eq!(
            DockerMethod::default().install(&runner, &exact, None).await,
            Err("`docker pull ghcr.io/openclaw/openclaw:2026.9.1` failed (exit 1): Error response from daemon: manifest unknown".into())
        );
        assert_eq!(runner.calls().len(), 1);
        // A malformed pin is refused before anything runs.
        let runner = FakeRunner::new();
        assert!(
            DockerMethod::default()
                .install(&runner, &exact, Some("latest"))
                .await
                .is_err()
        );
        assert!(runner.calls().is_empty());
    }

    #[test]
    fn homebrew_is_found_on_macos_and_refused_elsewhere_unless_linuxbrew() {
        let mac = FakeHost::new("macos", 501).executable("/opt/homebrew/bin/brew");
        assert_eq!(
            BrewMethod::locate(&mac, "openclaw").unwrap().brew,
            Path::new("/opt/homebrew/bin/brew")
        );
        let intel = FakeHost::new("macos", 501)
            .var("PATH", "/usr/bin")
            .executable("/usr/local/bin/brew");
        assert_eq!(
            BrewMethod::locate(&intel, "openclaw").unwrap().brew,
            Path::new("/usr/local/bin/brew")
        );
        assert_eq!(
            BrewMethod::locate(&FakeHost::new("macos", 501), "openclaw").unwrap_err(),
            "Homebrew is not installed on this host (looked in /opt/homebrew/bin, /usr/local/bin and on PATH)"
        );
        assert_eq!(
            BrewMethod::locate(&FakeHost::new("linux", 1000), "openclaw").unwrap_err(),
            "Homebrew is a macOS install method, and this linux host has no Homebrew (linuxbrew): looked for /home/linuxbrew/.linuxbrew/bin/brew, ~/.linuxbrew/bin/brew and brew on PATH"
        );
        let linuxbrew =
            FakeHost::new("linux", 1000).executable("/home/linuxbrew/.linuxbrew/bin/brew");
        assert_eq!(
            BrewMethod::locate(&linuxbrew, "openclaw").unwrap().brew,
            Path::new("/home/linuxbrew/.linuxbrew/bin/brew")
        );
        let home = FakeHost::new("linux", 1000)
            .var("HOME", "/home/claw")
            .executable("/home/claw/.linuxbrew/bin/brew");
        assert!(BrewMethod::locate(&home, "openclaw").is_ok());
        assert_eq!(
            BrewMethod::locate(
                &FakeHost::new("macos", 0).executable("/opt/homebrew/bin/brew"),
                "openclaw"
            )
            .unwrap_err(),
            "Homebrew refuses to run as root: run the agent as the user who owns the Homebrew prefix, or use the npm method"
        );
        assert_eq!(
            BrewMethod::locate(&FakeHost::new("freebsd", 1000), "openclaw").unwrap_err(),
            "Homebrew is a macOS install method; this host runs freebsd"
        );
        assert!(BrewMethod::locate(&mac, "moltis-org/tap/moltis").is_ok());
        for bad in ["", "--force", "open claw", "a/b", "OpenClaw", "x;y"] {
            assert!(
                BrewMethod::locate(&mac, bad).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn brew_output_is_parsed() {
        assert_eq!(
            parse_list_versions("openclaw", "openclaw 2026.9.1 2026.8.2_1\n"),
            ["2026.9.1", "2026.8.2_1"]
        );
        assert!(parse_list_versions("openclaw", "").is_empty());
        assert!(parse_list_versions("openclaw", "openclaw-beta 2026.9.1\n").is_empty());
        assert_eq!(parse_list_versions("moltis", "moltis 0.9.3\n"), ["0.9.3"]);
        let info = r#"{"formulae":[{"name":"openclaw","full_name":"openclaw","versions":{"stable":"2026.9.6","head":null,"bottle":true},"revision":0,"installed":[]}],"casks":[]}"#;
        assert_eq!(parse_info_stable(info), Ok("2026.9.6".into()));
        assert!(parse_info_stable(r#"{"formulae":[],"casks":[]}"#).is_err());
        assert!(parse_info_stable("Error: No available formula").is_err());
        assert!(same_version("2026.9.1_2", "2026.9.1"));
        assert!(!same_version("2026.9.10", "2026.9.1"));
    }

    fn brew() -> BrewMethod {
        BrewMethod {
            brew: PathBuf::from("/opt/homebrew/bin/brew"),
            formula: "openclaw".into(),
        }
    }

    const INFO: &str =
        r#"{"formulae":[{"name":"openclaw","versions":{"stable":"2026.9.6"}}],"casks":[]}"#;

    #[tokio::test]
    async fn a_brew_install_installs_upgrades_or_does_nothing() {
        let stable = Wanted::Channel(Channel::Stable);
        // Not installed → install, then verify.
        let runner = FakeRunner::new()
            .then(CommandOutput::failed(
                1,
                "Error: No such keg: /opt/homebrew/Cellar/openclaw",
            ))
            .then_ok(INFO)
            .then_ok("==> Pouring openclaw--2026.9.6.arm64_sonoma.bottle.tar.gz\n")
            .then_ok("openclaw 2026.9.6\n");
        let done = brew().install(&runner, &stable).await.unwrap();
        assert_eq!(
            done,
            BrewInstalled {
                version: "2026.9.6".into(),
                action: "installed"
            }
        );
        assert_eq!(
            runner.lines(),
            [
                "/opt/homebrew/bin/brew list --versions openclaw",
                "/opt/homebrew/bin/brew info --json=v2 openclaw",
                "/opt/homebrew/bin/brew install openclaw",
                "/opt/homebrew/bin/brew list --versions openclaw",
            ]
        );
        // Older installed → upgrade.
        let runner = FakeRunner::new()
            .then_ok("openclaw 2026.9.1\n")
            .then_ok(INFO)
            .then_ok("")
            .then_ok("openclaw 2026.9.6\n");
        let exact = Wanted::Version(ReleaseVersion::parse("2026.9.6").unwrap());
        assert_eq!(
            brew().install(&runner, &exact).await.unwrap().action,
            "upgraded"
        );
        assert_eq!(runner.lines()[2], "/opt/homebrew/bin/brew upgrade openclaw");
        // Already there (a rebuilt revision counts) → nothing changes.
        let runner = FakeRunner::new()
            .then_ok("openclaw 2026.9.6_1\n")
            .then_ok(INFO);
        assert_eq!(
            brew().install(&runner, &stable).await.unwrap().action,
            "already installed"
        );
        assert_eq!(runner.calls().len(), 2);
        // brew says yes but the version is not there.
        let runner = FakeRunner::new()
            .then(CommandOutput::failed(1, ""))
            .then_ok(INFO)
            .then_ok("")
            .then_ok("openclaw 2026.9.5\n");
        assert_eq!(
            brew().install(&runner, &stable).await.unwrap_err(),
            "brew reported success, but openclaw 2026.9.6 is not installed (it lists 2026.9.5)"
        );
    }

    #[tokio::test]
    async fn brew_refuses_what_it_cannot_install_before_changing_anything() {
        let runner = FakeRunner::new();
        assert_eq!(
            brew()
                .install(&runner, &Wanted::Channel(Channel::Beta))
                .await
                .unwrap_err(),
            "Homebrew installs only the formula's stable version, not beta: use the npm or docker method"
        );
        assert!(runner.calls().is_empty());
        let runner = FakeRunner::new()
            .then_ok("openclaw 2026.9.6\n")
            .then_ok(INFO);
        let older = Wanted::Version(ReleaseVersion::parse("2026.9.1").unwrap());
        assert_eq!(
            brew().install(&runner, &older).await.unwrap_err(),
            "Homebrew's openclaw formula is at 2026.9.6, not 2026.9.1, and Homebrew cannot install another version: use the npm or docker method"
        );
        // Only the two read-only queries ran.
        assert_eq!(runner.calls().len(), 2);
    }
}
