//! The private certificate authority that identifies agents.
//!
//! Created once, on the first start of the first replica (under a Postgres advisory lock, so
//! concurrent replicas agree on one CA), and kept in the `certificate_authority` row with its
//! private key sealed under the key-encryption key. The key is decrypted only in memory and is
//! never logged or returned by any API.
//!
//! Node certificates are signed from the CSR's public key alone: the CSR's subject, SANs and
//! extensions are ignored, and the node id the server chose is written into the URI SAN.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use sqlx::PgPool;
use uuid::Uuid;

use crate::crypto::{CryptoError, KeyEncryptionKey, sha256_pin};
use crate::db::ADVISORY_LOCK_CA;

/// Associated data binding the sealed CA key to its purpose.
const CA_KEY_CONTEXT: &[u8] = b"moltops:ca-private-key:v1";
/// A CSR larger than this is refused before it is parsed.
pub const MAX_CSR_BYTES: usize = 8 * 1024;
/// Validity of the CA itself.
const CA_LIFETIME_DAYS: i64 = 3650;
/// Certificates start this long before `now`, to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(
        "the CA in the database was sealed with key {stored}, but this replica has key {ours}: \
         start every replica with the same MOLTOPS_MASTER_KEY (or key file)"
    )]
    WrongKey { stored: String, ours: String },
    #[error("certificate error: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the CSR is larger than {MAX_CSR_BYTES} bytes")]
    CsrTooLarge,
    #[error("the CSR is not a valid, self-signed PKCS#10 request")]
    CsrInvalid,
    #[error("time out of range")]
    Time,
    #[error("a certificate could not be read back: {0}")]
    Malformed(&'static str),
}

/// A certificate the CA just issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub pem: String,
    pub der: CertificateDer<'static>,
    pub serial_hex: String,
    pub not_after: DateTime<Utc>,
}

/// The loaded CA: its certificate and, in memory only, its signing key.
pub struct CertificateAuthority {
    certificate_pem: String,
    certificate_der: CertificateDer<'static>,
    pin: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA from the database, creating it if this is the first start. Safe to call from
    /// several replicas at once.
    pub async fn load_or_create(
        pool: &PgPool,
        kek: &KeyEncryptionKey,
        now: DateTime<Utc>,
        rng: &mut (dyn RngCore + Send),
    ) -> Result<Arc<Self>, CaError> {
        let mut tx = pool.begin().await?;
        // Transaction-scoped: released on commit or rollback, even if this process dies.
        sqlx::query!("select pg_advisory_xact_lock($1)", ADVISORY_LOCK_CA)
            .execute(&mut *tx)
            .await?;
        let existing = sqlx::query!(
            "select certificate_pem, key_sealed, kek_id from certificate_authority where id = 1"
        )
        .fetch_optional(&mut *tx)
        .await?;
        let ca = match existing {
            Some(row) => {
                if row.kek_id != kek.id() {
                    return Err(CaError::WrongKey {
                        stored: row.kek_id,
                        ours: kek.id().to_owned(),
                    });
                }
                let key_der = kek.open(&row.key_sealed, CA_KEY_CONTEXT)?;
                Self::from_parts(&row.certificate_pem, &key_der)?
            }
            None => {
                let (ca, key_der) = Self::generate(now)?;
                let sealed = kek.seal(&key_der, CA_KEY_CONTEXT, rng)?;
                sqlx::query!(
                    "insert into certificate_authority (id, certificate_pem, key_sealed, kek_id, created_at)
                     values (1, $1, $2, $3, $4)",
                    ca.certificate_pem,
                    sealed,
                    kek.id(),
                    now
                )
                .execute(&mut *tx)
                .await?;
                tracing::info!(pin = %ca.pin, "created the moltops certificate authority");
                ca
            }
        };
        tx.commit().await?;
        Ok(Arc::new(ca))
    }

    /// A fresh CA (returned with its PKCS#8 key, for sealing).
    pub fn generate(now: DateTime<Utc>) -> Result<(Self, zeroize::Zeroizing<Vec<u8>>), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "moltops fleet CA");
        name.push(DnType::OrganizationName, "moltops");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = to_offset(now - BACKDATE)?;
        params.not_after = to_offset(now + Duration::days(CA_LIFETIME_DAYS))?;
        let cert = params.self_signed(&key)?;
        let key_der = zeroize::Zeroizing::new(key.serialize_der());
        let ca = Self::from_parts(&cert.pem(), &key_der)?;
        Ok((ca, key_der))
    }

    fn from_parts(certificate_pem: &str, key_pkcs8_der: &[u8]) -> Result<Self, CaError> {
        let key = KeyPair::try_from(key_pkcs8_der)?;
        let issuer = Issuer::from_ca_cert_pem(certificate_pem, key)?;
        let certificate_der =
            pem_to_der(certificate_pem).ok_or(CaError::Malformed("the CA certificate PEM"))?;
        Ok(Self {
            pin: sha256_pin(&certificate_der),
            certificate_pem: certificate_pem.to_owned(),
            certificate_der,
            issuer,
        })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.certificate_der
    }

    /// `sha256:<hex>` of the CA certificate; what `moltops-agent enroll --ca-pin` checks.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// Checks a CSR's size, structure and proof of possession without signing anything.
    pub fn parse_csr(csr_der: &[u8]) -> Result<CertificateSigningRequestParams, CaError> {
        if csr_der.len() > MAX_CSR_BYTES {
            return Err(CaError::CsrTooLarge);
        }
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|_| CaError::CsrInvalid)
    }

    /// A client certificate for `node_id`, from the public key of an already-parsed CSR.
    pub fn sign_node_certificate(
        &self,
        csr: &CertificateSigningRequestParams,
        node_id: Uuid,
        now: DateTime<Utc>,
        lifetime: Duration,
        rng: &mut dyn RngCore,
    ) -> Result<IssuedCertificate, CaError> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("node {node_id}"));
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::URI(
            moltops_proto::identity::node_uri(node_id).try_into()?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, &csr.public_key, now, lifetime, rng)
    }

    /// A server certificate for the gRPC port, with its fresh key (PKCS#8).
    pub fn issue_server_certificate(
        &self,
        names: &[String],
        now: DateTime<Utc>,
        lifetime: Duration,
        rng: &mut dyn RngCore,
    ) -> Result<(IssuedCertificate, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "moltops control plane");
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issued = self.sign(params, &key, now, lifetime, rng)?;
        let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Ok((issued, key_der))
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
        now: DateTime<Utc>,
        lifetime: Duration,
        rng: &mut dyn RngCore,
    ) -> Result<IssuedCertificate, CaError> {
        let mut serial = [0u8; 16];
        rng.fill_bytes(&mut serial);
        serial[0] &= 0x7f; // A positive INTEGER.
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        let not_after = now + lifetime;
        params.not_before = to_offset(now - BACKDATE)?;
        params.not_after = to_offset(not_after)?;
        let cert = params.signed_by(public_key, &self.issuer)?;
        // The serial as it appears in the certificate (DER may drop leading zero bytes), so
        // it compares equal to what the TLS layer reads from a presented certificate.
        let serial_hex =
            serial_of(cert.der()).ok_or(CaError::Malformed("the serial of a new certificate"))?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            der: cert.der().clone(),
            serial_hex,
            not_after: DateTime::from_timestamp(not_after.timestamp(), 0).ok_or(CaError::Time)?,
        })
    }
}

fn to_offset(t: DateTime<Utc>) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|_| CaError::Time)
}

/// The serial number of a DER certificate, as lowercase hex of its content octets.
pub fn serial_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(hex::encode(cert.raw_serial()))
}

/// The DER of the first certificate in a PEM string.
pub fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use x509_parser::prelude::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap()
    }

    fn csr_for(key: &KeyPair, sans: Vec<String>) -> Vec<u8> {
        let params = CertificateParams::new(sans).unwrap();
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn node_certificate_carries_only_the_server_chosen_identity() {
        let (ca, _) = CertificateAuthority::generate(now()).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // The CSR asks for a server name and a foreign identity; neither may reach the cert.
        let csr_der = csr_for(
            &key,
            vec![
                "evil.example".into(),
                "spiffe://moltops/node/00000000-0000-0000-0000-000000000000".into(),
            ],
        );
        let csr = CertificateAuthority::parse_csr(&csr_der).unwrap();
        let node_id = Uuid::from_u128(42);
        let mut rng = StdRng::seed_from_u64(1);
        let issued = ca
            .sign_node_certificate(&csr, node_id, now(), Duration::hours(24), &mut rng)
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        assert_eq!(
            sans,
            vec![format!(
                "URI(\"{}\")",
                moltops_proto::identity::node_uri(node_id)
            )]
        );
        assert!(!cert.is_ca());
        assert_eq!(
            cert.validity().not_after.timestamp(),
            (now() + Duration::hours(24)).timestamp()
        );
        assert_eq!(issued.not_after, now() + Duration::hours(24));
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );
        assert!(
            cert.verify_signature(Some(
                X509Certificate::from_der(ca.certificate_der())
                    .unwrap()
                    .1
                    .public_key()
            ))
            .is_ok()
        );
    }

    #[test]
    fn oversized_and_garbage_csrs_are_refused() {
        assert!(matches!(
            CertificateAuthority::parse_csr(&vec![0x30; MAX_CSR_BYTES + 1]),
            Err(CaError::CsrTooLarge)
        ));
        assert!(matches!(
            CertificateAuthority::parse_csr(b"not a csr"),
            Err(CaError::CsrInvalid)
        ));
        // A well-formed CSR whose signature does not match: proof of possession fails.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut der = csr_for(&key, vec![]);
        let last = der.len() - 1;
        der[last] ^= 0x55;
        assert!(CertificateAuthority::parse_csr(&der).is_err());
    }

    #[test]
    fn a_reloaded_ca_keeps_its_pin_and_signs() {
        let (ca, key_der) = CertificateAuthority::generate(now()).unwrap();
        let reloaded = CertificateAuthority::from_parts(ca.certificate_pem(), &key_der).unwrap();
        assert_eq!(ca.pin(), reloaded.pin());
        assert!(ca.pin().starts_with("sha256:") && ca.pin().len() == 7 + 64);
        let mut rng = StdRng::seed_from_u64(2);
        let (server, _) = reloaded
            .issue_server_certificate(
                &["localhost".into(), "127.0.0.1".into()],
                now(),
                Duration::days(7),
                &mut rng,
            )
            .unwrap();
        assert!(!server.pem.is_empty());
    }
}
