//! The REST port over HTTPS when a certificate is configured.

use std::sync::Arc;

use moltops_e2e::{Server, ServerOptions, TestDatabase, scratch};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn the_rest_port_serves_https_with_the_configured_certificate_and_refuses_plain_http() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDatabase::create().await;
    let dir = scratch("https");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("http.crt"), dir.join("http.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let options = ServerOptions {
        http_tls: Some((cert_path, key_path)),
        ..Default::default()
    };
    let server = Server::start(&db.url, &dir.join("server"), &options).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.der().to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""status":"ok""#), "{response}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::get(server.url("/health")).await;
    assert!(plain.is_err(), "{plain:?}");
    drop(server);
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(&dir);
}
