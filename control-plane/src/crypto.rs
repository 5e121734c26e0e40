//! Secrets at rest: the key-encryption key (KEK) that seals the CA private key with AES-256-GCM,
//! and the generation and hashing of bearer secrets (API tokens, enrollment tokens).
//!
//! Bearer secrets carry 192–256 bits of entropy, so a single SHA-256 is the right hash for them:
//! a slow password hash buys nothing against a search space that large, and a fast lookup by hash
//! lets the server reject a bad token before doing anything costly.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("MOLTOPS_MASTER_KEY must be 32 bytes encoded as base64 (got {0} bytes after decoding)")]
    MasterKeyLength(usize),
    #[error("MOLTOPS_MASTER_KEY is not valid base64")]
    MasterKeyEncoding,
    #[error("key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} must be readable by its owner only (mode 0600), found {mode:o}")]
    KeyFileMode { path: String, mode: u32 },
    #[error("sealed data is too short or corrupt")]
    Malformed,
    #[error("decryption failed: wrong key-encryption key, or the data was altered")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
}

const NONCE_LEN: usize = 12;

/// The key that seals other keys. Never logged: `Debug` prints only its id.
pub struct KeyEncryptionKey {
    key: Zeroizing<[u8; 32]>,
    id: String,
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEncryptionKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl KeyEncryptionKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        // The id lets a replica detect that it was started with a different key than the one
        // that sealed the CA. It is a domain-separated hash, so it reveals nothing of the key.
        let mut hasher = Sha256::new();
        hasher.update(b"moltops-kek-id:v1:");
        hasher.update(bytes);
        let id = format!("kek-{}", &hex::encode(hasher.finalize())[..16]);
        Self {
            key: Zeroizing::new(bytes),
            id,
        }
    }

    /// From the base64 value of `MOLTOPS_MASTER_KEY`.
    pub fn from_base64(encoded: &str) -> Result<Self, CryptoError> {
        let decoded = Zeroizing::new(
            STANDARD
                .decode(encoded.trim())
                .map_err(|_| CryptoError::MasterKeyEncoding)?,
        );
        let bytes: [u8; 32] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::MasterKeyLength(decoded.len()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// Loads the key file, creating it (mode 0600, 32 random bytes, base64) when absent. The
    /// file appears complete or not at all (written aside, fsynced, then hard-linked into
    /// place), so replicas starting together agree on one key and a crash leaves no empty file.
    /// A key file readable by others is refused rather than silently used.
    pub fn load_or_create_file(path: &Path, rng: &mut dyn RngCore) -> Result<Self, CryptoError> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let display = path.display().to_string();
        let io_err = |source| CryptoError::KeyFile {
            path: display.clone(),
            source,
        };
        if !path.exists() {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(bytes.as_mut());
            let encoded = Zeroizing::new(STANDARD.encode(bytes.as_ref()));
            let mut suffix = [0u8; 8];
            rng.fill_bytes(&mut suffix);
            let temp = path.with_extension(format!("tmp-{}", hex::encode(suffix)));
            {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&temp)
                    .map_err(io_err)?;
                file.write_all(encoded.as_bytes()).map_err(io_err)?;
                file.sync_all().map_err(io_err)?;
            }
            let linked = std::fs::hard_link(&temp, path);
            let _ = std::fs::remove_file(&temp);
            match linked {
                Ok(()) => return Ok(Self::from_bytes(*bytes)),
                // Another process won the race; use its key.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        let meta = std::fs::metadata(path).map_err(io_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::KeyFileMode {
                path: display,
                mode,
            });
        }
        let contents = Zeroizing::new(std::fs::read_to_string(path).map_err(io_err)?);
        Self::from_base64(&contents).map_err(|e| CryptoError::KeyFile {
            path: display,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `nonce || ciphertext || tag`. `context` is bound as associated data, so a sealed value
    /// cannot be moved to another purpose.
    pub fn seal(
        &self,
        plaintext: &[u8],
        context: &[u8],
        rng: &mut dyn RngCore,
    ) -> Result<Vec<u8>, CryptoError> {
        let cipher = Aes256Gcm::new(self.key.as_ref().into());
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: context,
        };
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .map_err(|_| CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let cipher = Aes256Gcm::new(self.key.as_ref().into());
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// A new bearer secret: `prefix` + base64url of `bytes` random bytes. The prefix makes leaked
/// tokens recognisable to secret scanners.
pub fn generate_secret(prefix: &str, bytes: usize, rng: &mut dyn RngCore) -> Zeroizing<String> {
    let mut raw = Zeroizing::new(vec![0u8; bytes]);
    rng.fill_bytes(&mut raw);
    Zeroizing::new(format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(raw.as_slice())
    ))
}

/// The stored form of a bearer secret.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// `sha256:<hex>` of some bytes (certificate pins).
pub fn sha256_pin(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn seal_round_trips_and_detects_tampering_and_wrong_context() {
        let mut rng = StdRng::seed_from_u64(7);
        let kek = KeyEncryptionKey::from_bytes([9u8; 32]);
        let sealed = kek.seal(b"ca private key", b"ca-key", &mut rng).unwrap();
        assert_eq!(
            kek.open(&sealed, b"ca-key").unwrap().as_slice(),
            b"ca private key"
        );
        assert!(matches!(
            kek.open(&sealed, b"other"),
            Err(CryptoError::Decrypt)
        ));
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(matches!(
            kek.open(&tampered, b"ca-key"),
            Err(CryptoError::Decrypt)
        ));
        let other = KeyEncryptionKey::from_bytes([8u8; 32]);
        assert!(matches!(
            other.open(&sealed, b"ca-key"),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            kek.open(&sealed[..10], b"ca-key"),
            Err(CryptoError::Malformed)
        ));
        assert_ne!(kek.id(), other.id());
        assert!(!format!("{kek:?}").contains("9, 9"));
    }

    #[test]
    fn master_key_must_be_32_bytes_of_base64() {
        assert!(KeyEncryptionKey::from_base64(&STANDARD.encode([1u8; 32])).is_ok());
        assert!(matches!(
            KeyEncryptionKey::from_base64(&STANDARD.encode([1u8; 16])),
            Err(CryptoError::MasterKeyLength(16))
        ));
        assert!(matches!(
            KeyEncryptionKey::from_base64("not base64!"),
            Err(CryptoError::MasterKeyEncoding)
        ));
    }

    #[test]
    fn key_file_is_created_0600_and_reloaded_and_a_loose_mode_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("moltops-kek-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.key");
        let mut rng = StdRng::seed_from_u64(1);
        let first = KeyEncryptionKey::load_or_create_file(&path, &mut rng).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = KeyEncryptionKey::load_or_create_file(&path, &mut rng).unwrap();
        assert_eq!(first.id(), again.id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyEncryptionKey::load_or_create_file(&path, &mut rng),
            Err(CryptoError::KeyFileMode { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_have_the_prefix_and_enough_entropy() {
        let mut rng = StdRng::seed_from_u64(3);
        let a = generate_secret("moe_", 24, &mut rng);
        let b = generate_secret("moe_", 24, &mut rng);
        assert!(a.starts_with("moe_"));
        assert_eq!(a.len(), 4 + 32);
        assert_ne!(*a, *b);
        assert_eq!(hash_secret(&a), hash_secret(&a.clone()));
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }
}
