//! `wss://` and `https://`: the client through a TLS terminator in front of the relay (what
//! a balancer does), trusting a private CA; and refusing a server it cannot verify.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use chanrelay_client::{Error, Relay, Tls};
use common::TestRelay;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};

/// A private CA and a certificate it signed for 127.0.0.1 and localhost.
struct Pki {
    ca_pem: String,
    server: rustls::ServerConfig,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server,
    }
}

/// Terminates TLS on a free loopback port and forwards each connection to `upstream`.
async fn tls_terminator(server: Arc<rustls::ServerConfig>, upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    tokio::spawn(async move {
        // Bounded: a test opens a handful of connections.
        for _ in 0..64 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_through_a_tls_terminator_with_a_private_ca() {
    let relay = TestRelay::start();
    let pki = pki();
    let server = Arc::new(pki.server);
    let data = tls_terminator(server.clone(), relay.data).await;
    let control = tls_terminator(server, relay.control).await;
    let tls = Tls::with_ca_pem(pki.ca_pem.as_bytes()).unwrap();
    let client = Relay::new(
        format!("https://127.0.0.1:{}", control.port()),
        format!("wss://127.0.0.1:{}", data.port()),
    )
    .with_tls(tls);
    let mut channel = client.create_channel().await.expect("create over https");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let mut writer = channel.writer;
    let writer_task = tokio::spawn(async move {
        writer.write(&sent).await?;
        writer.close().await
    });
    let got = channel.reader.read_all().await.expect("read over wss");
    writer_task.await.unwrap().expect("write over wss");
    assert!(
        got == payload,
        "{} bytes back, {} sent",
        got.len(),
        payload.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_outside_the_trusted_cas_is_refused() {
    let relay = TestRelay::start();
    let server = Arc::new(pki().server);
    let control = tls_terminator(server, relay.control).await;
    // Only the webpki roots: the private CA is not among them.
    let client = Relay::new(
        format!("https://127.0.0.1:{}", control.port()),
        "wss://127.0.0.1:1",
    );
    match client.create_channel().await {
        Err(Error::Io(e)) => assert!(
            e.to_string().to_lowercase().contains("certificate"),
            "not a certificate error: {e}"
        ),
        other => panic!("an unverified server was trusted: {other:?}"),
    }
    assert!(Tls::with_ca_pem(b"not a pem").is_err());
}
