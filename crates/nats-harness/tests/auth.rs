//! Servers that require credentials or TLS accept the right client and
//! reject the wrong one.

use std::path::PathBuf;

use async_nats::{ConnectErrorKind, ConnectOptions};
use nats_harness::NatsServer;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn cert(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/certs")
        .join(name)
}

#[tokio::test]
async fn user_and_password() -> TestResult {
    let server = NatsServer::builder()
        .user_password("alice", "right")
        .start()
        .await?;

    let client = ConnectOptions::with_user_and_password("alice".into(), "right".into())
        .connect(server.url())
        .await?;
    client.flush().await?;

    let wrong = ConnectOptions::with_user_and_password("alice".into(), "wrong".into())
        .connect(server.url())
        .await
        .expect_err("wrong password");
    assert_eq!(
        wrong.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{wrong}"
    );

    let anonymous = async_nats::connect(server.url())
        .await
        .expect_err("no credentials");
    assert_eq!(
        anonymous.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{anonymous}"
    );
    Ok(())
}

#[tokio::test]
async fn token() -> TestResult {
    let server = NatsServer::builder().token("s3cret-token").start().await?;

    let client = ConnectOptions::with_token("s3cret-token".into())
        .connect(server.url())
        .await?;
    client.flush().await?;

    let wrong = ConnectOptions::with_token("guess".into())
        .connect(server.url())
        .await
        .expect_err("wrong token");
    assert_eq!(
        wrong.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{wrong}"
    );
    Ok(())
}

#[tokio::test]
async fn tls_server() -> TestResult {
    let server = NatsServer::builder()
        .tls(cert("server.pem"), cert("server-key.pem"))
        .start()
        .await?;

    let client = ConnectOptions::new()
        .add_root_certificates(cert("ca.pem"))
        .require_tls(true)
        .connect(server.url())
        .await?;
    client.flush().await?;
    assert!(client.server_info().tls_required);

    // Without the test CA, the server's certificate is not trusted.
    let untrusted = ConnectOptions::new()
        .require_tls(true)
        .connect(server.url())
        .await
        .expect_err("unknown issuer");
    // async-nats 0.51 reports a rejected certificate as an I/O error.
    assert!(
        matches!(
            untrusted.kind(),
            ConnectErrorKind::Tls | ConnectErrorKind::Io
        ),
        "{untrusted}"
    );
    Ok(())
}

#[tokio::test]
async fn tls_with_client_certificates() -> TestResult {
    let server = NatsServer::builder()
        .tls(cert("server.pem"), cert("server-key.pem"))
        .tls_verify_clients(cert("ca.pem"))
        .start()
        .await?;

    let client = ConnectOptions::new()
        .add_root_certificates(cert("ca.pem"))
        .add_client_certificate(cert("client.pem"), cert("client-key.pem"))
        .require_tls(true)
        .connect(server.url())
        .await?;
    client.flush().await?;

    let no_client_cert = ConnectOptions::new()
        .add_root_certificates(cert("ca.pem"))
        .require_tls(true)
        .connect(server.url())
        .await;
    assert!(
        no_client_cert.is_err(),
        "a client without a certificate got in"
    );
    Ok(())
}
