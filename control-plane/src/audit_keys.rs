//! The control plane's audit signing key (Ed25519) and signed checkpoints of the chain head.
//!
//! The key is created once, under an advisory lock, and stored sealed with the key-encryption key
//! (like the CA key), so someone with only database access can rewrite rows but cannot sign a
//! checkpoint. Checkpoints are exported with the log; a chain that no longer matches a checkpoint
//! kept elsewhere was truncated or rewritten.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SubsecRound, Utc};
use rand::RngCore;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::audit::Checkpoint;
use crate::crypto::KeyEncryptionKey;

const KEY_CONTEXT: &[u8] = b"moltops audit signing key v1";
const SIGNED_CONTEXT: &[u8] = b"moltops-audit-checkpoint-v1\0";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("sealing: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("the audit signing key is unusable: {0}")]
    Key(String),
    #[error(
        "the audit signing key was sealed with another master key (stored {stored}, ours {ours})"
    )]
    WrongKey { stored: String, ours: String },
}

/// The bytes a checkpoint signature covers.
fn signed_message(seq: i64, hash: &[u8], signed_at: DateTime<Utc>) -> Vec<u8> {
    let mut message = SIGNED_CONTEXT.to_vec();
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(hash);
    message.extend_from_slice(&signed_at.timestamp_micros().to_be_bytes());
    message
}

fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// This control plane's signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
    pub id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads the key, or creates it on first start (one replica wins the race).
    pub async fn load_or_create(
        pool: &PgPool,
        kek: &KeyEncryptionKey,
        now: DateTime<Utc>,
        rng: &mut (dyn RngCore + Send),
    ) -> Result<Arc<Self>, KeyError> {
        let mut tx = pool.begin().await?;
        sqlx::query!(
            "select pg_advisory_xact_lock($1)",
            crate::db::ADVISORY_LOCK_AUDIT_KEY
        )
        .execute(&mut *tx)
        .await?;
        let existing = sqlx::query!(
            "select id, key_sealed, kek_id from audit_signing_keys order by created_at desc limit 1"
        )
        .fetch_optional(&mut *tx)
        .await?;
        let signer = match existing {
            Some(row) => {
                if row.kek_id != kek.id() {
                    return Err(KeyError::WrongKey {
                        stored: row.kek_id,
                        ours: kek.id().to_owned(),
                    });
                }
                let pkcs8 = kek.open(&row.key_sealed, KEY_CONTEXT)?;
                Self::from_pkcs8(&pkcs8)?
            }
            None => {
                let mut seed = zeroize::Zeroizing::new([0u8; 32]);
                rng.fill_bytes(seed.as_mut());
                let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
                    .map_err(|e| KeyError::Key(e.to_string()))?;
                // Store the seed (the private key) sealed; the public key in clear.
                let sealed = kek.seal(seed.as_ref(), KEY_CONTEXT, rng)?;
                let public = pair.public_key().as_ref().to_vec();
                let id = key_id(&public);
                sqlx::query!(
                    "insert into audit_signing_keys (id, public_key, key_sealed, kek_id, created_at)
                     values ($1, $2, $3, $4, $5)",
                    id,
                    public,
                    sealed,
                    kek.id(),
                    now
                )
                .execute(&mut *tx)
                .await?;
                tracing::info!(key_id = %id, "created the audit signing key");
                Self { pair, id }
            }
        };
        tx.commit().await?;
        Ok(Arc::new(signer))
    }

    fn from_pkcs8(seed: &[u8]) -> Result<Self, KeyError> {
        let pair =
            Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| KeyError::Key(e.to_string()))?;
        let id = key_id(pair.public_key().as_ref());
        Ok(Self { pair, id })
    }

    /// A signer for tests, from a fixed seed.
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, KeyError> {
        Self::from_pkcs8(&seed)
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    pub fn sign(&self, seq: i64, hash: &[u8], signed_at: DateTime<Utc>) -> Checkpoint {
        let signed_at = signed_at.trunc_subsecs(6);
        let signature = self.pair.sign(&signed_message(seq, hash, signed_at));
        Checkpoint {
            seq,
            hash: hex::encode(hash),
            signed_at,
            key_id: self.id.clone(),
            signature: STANDARD.encode(signature.as_ref()),
        }
    }
}

/// Public keys that checkpoints may be signed with.
#[derive(Debug, Clone, Default)]
pub struct PublicKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl PublicKeys {
    /// Only this control plane's own key: a key merely found in the database proves nothing
    /// (whoever can write the database can add one).
    pub fn of(signer: &Signer) -> Self {
        Self {
            keys: vec![(signer.id.clone(), signer.public_key())],
        }
    }

    pub fn from_keys(keys: Vec<(String, Vec<u8>)>) -> Self {
        Self { keys }
    }

    pub fn verify(
        &self,
        key_id: &str,
        seq: i64,
        hash: &[u8],
        signed_at: DateTime<Utc>,
        signature: &[u8],
    ) -> Result<(), String> {
        let (id, public) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or_else(|| format!("signed by an unknown key {key_id}"))?;
        // The id is derived from the key: a stored key that does not match its id is forged.
        if key_id_matches(id, public) {
            UnparsedPublicKey::new(&ED25519, public)
                .verify(&signed_message(seq, hash, signed_at), signature)
                .map_err(|_| "the signature is not valid".to_owned())
        } else {
            Err(format!("key {key_id} does not match its public key"))
        }
    }
}

fn key_id_matches(id: &str, public: &[u8]) -> bool {
    key_id(public) == id
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("refusing to sign: {0}")]
    Tampered(String),
}

/// Signs the current chain head if it moved since the last checkpoint; returns the checkpoint.
/// The rows since the last checkpoint are verified first: the key never signs a head that does
/// not follow from what it signed before (so rewriting rows and the head in the database does
/// not earn a genuine signature).
pub async fn checkpoint(
    pool: &PgPool,
    signer: &Signer,
    now: DateTime<Utc>,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let head = sqlx::query!("select seq, hash, chain_start from audit_head where id")
        .fetch_one(pool)
        .await?;
    if head.seq < head.chain_start {
        return Ok(None);
    }
    let last = stored(pool).await?.pop();
    let (mut after, mut prev) = match &last {
        Some(cp) => {
            let hash = hex::decode(&cp.hash).unwrap_or_default();
            let signature = STANDARD.decode(&cp.signature).unwrap_or_default();
            PublicKeys::of(signer)
                .verify(&cp.key_id, cp.seq, &hash, cp.signed_at, &signature)
                .map_err(|e| CheckpointError::Tampered(format!("the last checkpoint: {e}")))?;
            (cp.seq, hash)
        }
        None => (head.chain_start - 1, crate::audit::GENESIS.to_vec()),
    };
    if after >= head.seq {
        return Ok(None);
    }
    while after < head.seq {
        let rows = crate::audit::rows_after(pool, after, 1000).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows.iter().take_while(|r| r.seq <= head.seq) {
            let computed = crate::audit::chain_hash(&prev, row);
            if row.seq != after + 1
                || row.prev_hash.as_deref() != Some(prev.as_slice())
                || row.hash.as_deref() != Some(computed.as_slice())
            {
                return Err(CheckpointError::Tampered(format!(
                    "row {} does not follow from the last signed checkpoint",
                    after + 1
                )));
            }
            after = row.seq;
            prev = computed;
        }
        if rows.last().is_some_and(|r| r.seq > head.seq) {
            break;
        }
    }
    if after != head.seq || prev != head.hash {
        return Err(CheckpointError::Tampered(
            "the chain head does not match its rows".into(),
        ));
    }
    let checkpoint = signer.sign(head.seq, &head.hash, now);
    let signature = STANDARD.decode(&checkpoint.signature).unwrap_or_default();
    let inserted = sqlx::query!(
        "insert into audit_checkpoints (seq, hash, signed_at, key_id, signature)
         values ($1, $2, $3, $4, $5) on conflict (seq) do nothing",
        head.seq,
        head.hash,
        checkpoint.signed_at,
        checkpoint.key_id,
        signature
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok((inserted == 1).then_some(checkpoint))
}

/// Every stored checkpoint, oldest first.
pub async fn stored(pool: &PgPool) -> Result<Vec<Checkpoint>, sqlx::Error> {
    let rows = sqlx::query!(
        "select seq, hash, signed_at, key_id, signature from audit_checkpoints order by seq"
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Checkpoint {
            seq: r.seq,
            hash: hex::encode(r.hash),
            signed_at: r.signed_at,
            key_id: r.key_id,
            signature: STANDARD.encode(r.signature),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_verify_only_unchanged_and_with_the_right_key() {
        let signer = Signer::from_seed([7; 32]).unwrap_or_else(|_| unreachable!());
        let keys = PublicKeys::from_keys(vec![(signer.id.clone(), signer.public_key())]);
        let at = DateTime::from_timestamp(1_800_000_000, 5_000).unwrap_or_default();
        let cp = signer.sign(42, &[9; 32], at);
        let sig = STANDARD.decode(&cp.signature).unwrap_or_default();
        assert!(
            keys.verify(&cp.key_id, 42, &[9; 32], cp.signed_at, &sig)
                .is_ok()
        );
        assert!(
            keys.verify(&cp.key_id, 43, &[9; 32], cp.signed_at, &sig)
                .is_err()
        );
        assert!(
            keys.verify(&cp.key_id, 42, &[8; 32], cp.signed_at, &sig)
                .is_err()
        );
        let later = cp.signed_at + chrono::Duration::seconds(1);
        assert!(keys.verify(&cp.key_id, 42, &[9; 32], later, &sig).is_err());
        let other = Signer::from_seed([8; 32]).unwrap_or_else(|_| unreachable!());
        let forged = other.sign(42, &[9; 32], at);
        let forged_sig = STANDARD.decode(&forged.signature).unwrap_or_default();
        assert!(
            keys.verify(&cp.key_id, 42, &[9; 32], at, &forged_sig)
                .is_err()
        );
        assert!(
            keys.verify(&forged.key_id, 42, &[9; 32], at, &forged_sig)
                .is_err()
        );
    }
}
