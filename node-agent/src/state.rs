//! The agent's state directory. Every write is atomic (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves either the old or the new file, never half of one. The private
//! key is created 0600 and never leaves the host.
//!
//! Layout: `agent.key` (PKCS#8 PEM), `agent.crt`, `ca.crt`, `node.json`. Renewal journals its
//! steps through `agent.key.pending` / `agent.crt.pending`; [`StateDir::recover`] finishes or
//! discards an interrupted renewal at start.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const KEY_FILE: &str = "agent.key";
pub const CERT_FILE: &str = "agent.crt";
pub const CA_FILE: &str = "ca.crt";
pub const NODE_FILE: &str = "node.json";
const PENDING_KEY: &str = "agent.key.pending";
const PENDING_CERT: &str = "agent.crt.pending";

/// What enrollment established.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: Uuid,
    /// host:port of the control plane's agent port.
    pub server: String,
    pub ca_pin: String,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating, mode 0700) a state directory.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(root)
            .with_context(|| format!("creating state directory {}", root.display()))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("securing state directory {}", root.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_enrolled(&self) -> bool {
        self.path(NODE_FILE).exists()
    }

    /// Writes `contents` to `name` atomically with `mode`.
    pub fn write_atomic(&self, name: &str, contents: &[u8], mode: u32) -> anyhow::Result<()> {
        let target = self.path(name);
        let temp = self.path(&format!(".{name}.tmp"));
        let _ = fs::remove_file(&temp);
        {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&temp)
                .with_context(|| format!("creating {}", temp.display()))?;
            file.write_all(contents)?;
            file.sync_all()?;
        }
        fs::rename(&temp, &target).with_context(|| format!("replacing {}", target.display()))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> anyhow::Result<()> {
        fs::File::open(&self.root)?.sync_all()?;
        Ok(())
    }

    pub fn read_string(&self, name: &str) -> anyhow::Result<String> {
        let path = self.path(name);
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    pub fn node(&self) -> anyhow::Result<NodeRecord> {
        let text = self.read_string(NODE_FILE)?;
        serde_json::from_str(&text).context("parsing node.json")
    }

    pub fn save_node(&self, node: &NodeRecord) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(node)?;
        self.write_atomic(NODE_FILE, &json, 0o600)
    }

    /// When the current certificate was written (the agent's own receipt time, which renewal
    /// timing is based on: it does not depend on the server's back-dating or clock).
    pub fn certificate_received_at(&self) -> anyhow::Result<SystemTime> {
        Ok(fs::metadata(self.path(CERT_FILE))?.modified()?)
    }

    /// Renewal step 1: the new key, before its CSR is sent.
    pub fn stage_renewal_key(&self, key_pem: &str) -> anyhow::Result<()> {
        self.write_atomic(PENDING_KEY, key_pem.as_bytes(), 0o600)
    }

    pub fn staged_renewal_key(&self) -> Option<String> {
        fs::read_to_string(self.path(PENDING_KEY)).ok()
    }

    /// Renewal step 2: the certificate arrived; make key and certificate current. Each rename is
    /// atomic; [`recover`](Self::recover) completes the pair after a crash between them.
    pub fn commit_renewal(&self, cert_pem: &str) -> anyhow::Result<()> {
        if !self.path(PENDING_KEY).exists() {
            bail!("no renewal in progress");
        }
        self.write_atomic(PENDING_CERT, cert_pem.as_bytes(), 0o644)?;
        fs::rename(self.path(PENDING_KEY), self.path(KEY_FILE))?;
        fs::rename(self.path(PENDING_CERT), self.path(CERT_FILE))?;
        self.sync_dir()
    }

    /// Finishes or discards an interrupted renewal.
    pub fn recover(&self) -> anyhow::Result<()> {
        let key = self.path(PENDING_KEY).exists();
        let cert = self.path(PENDING_CERT).exists();
        match (key, cert) {
            // Crashed after writing the certificate: finish both renames.
            (true, true) => {
                fs::rename(self.path(PENDING_KEY), self.path(KEY_FILE))?;
                fs::rename(self.path(PENDING_CERT), self.path(CERT_FILE))?;
            }
            // The key was already renamed; only the certificate is left.
            (false, true) => fs::rename(self.path(PENDING_CERT), self.path(CERT_FILE))?,
            // The request never completed: the old pair is still valid; drop the new key.
            (true, false) => fs::remove_file(self.path(PENDING_KEY))?,
            (false, false) => return Ok(()),
        }
        self.sync_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> StateDir {
        let dir = std::env::temp_dir().join(format!("moltops-agent-state-{}", Uuid::new_v4()));
        StateDir::open(&dir).unwrap()
    }

    #[test]
    fn atomic_writes_set_modes_and_replace() {
        let s = temp();
        s.write_atomic(KEY_FILE, b"one", 0o600).unwrap();
        s.write_atomic(KEY_FILE, b"two", 0o600).unwrap();
        assert_eq!(s.read_string(KEY_FILE).unwrap(), "two");
        let mode = fs::metadata(s.path(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(s.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        fs::remove_dir_all(s.root()).unwrap();
    }

    #[test]
    fn renewal_commits_and_recovers_from_each_crash_point() {
        let s = temp();
        s.write_atomic(KEY_FILE, b"old-key", 0o600).unwrap();
        s.write_atomic(CERT_FILE, b"old-cert", 0o644).unwrap();

        // Happy path.
        s.stage_renewal_key("new-key").unwrap();
        s.commit_renewal("new-cert").unwrap();
        assert_eq!(s.read_string(KEY_FILE).unwrap(), "new-key");
        assert_eq!(s.read_string(CERT_FILE).unwrap(), "new-cert");

        // Crash before the response: the staged key is dropped, the old pair stays.
        s.stage_renewal_key("k3").unwrap();
        s.recover().unwrap();
        assert_eq!(s.read_string(KEY_FILE).unwrap(), "new-key");
        assert!(s.staged_renewal_key().is_none());

        // Crash after writing the certificate, before either rename.
        s.stage_renewal_key("k4").unwrap();
        s.write_atomic(PENDING_CERT, b"c4", 0o644).unwrap();
        s.recover().unwrap();
        assert_eq!(
            (
                s.read_string(KEY_FILE).unwrap(),
                s.read_string(CERT_FILE).unwrap()
            ),
            ("k4".into(), "c4".into())
        );

        // Crash between the two renames.
        s.write_atomic(PENDING_CERT, b"c5", 0o644).unwrap();
        s.write_atomic(KEY_FILE, b"k5", 0o600).unwrap();
        s.recover().unwrap();
        assert_eq!(
            (
                s.read_string(KEY_FILE).unwrap(),
                s.read_string(CERT_FILE).unwrap()
            ),
            ("k5".into(), "c5".into())
        );

        assert!(
            s.commit_renewal("x").is_err(),
            "no staged key, nothing to commit"
        );
        fs::remove_dir_all(s.root()).unwrap();
    }
}
