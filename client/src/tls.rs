//! TLS for `wss://` and `https://` URLs (a balancer in front of the relays terminates it):
//! rustls with the `ring` provider, the webpki roots, and optionally a private CA.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};

/// Which servers a client trusts over TLS. The default trusts the webpki roots (the public
/// CAs browsers trust); [`Tls::with_ca_pem`] adds a private CA (a balancer with an internal
/// certificate).
///
/// # Example
///
/// ```no_run
/// use chanrelay_client::{Relay, Tls};
///
/// # fn example() -> chanrelay_client::Result<()> {
/// let ca = std::fs::read("/etc/chanrelay/ca.pem")?;
/// let relay = Relay::new("https://relays.internal:8443", "wss://relays.internal:443")
///     .with_tls(Tls::with_ca_pem(&ca)?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

impl Default for Tls {
    fn default() -> Tls {
        Tls::from_roots(webpki())
    }
}

fn webpki() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

impl Tls {
    /// The webpki roots plus every certificate in `pem` (one or more `CERTIFICATE` blocks).
    pub fn with_ca_pem(pem: &[u8]) -> Result<Tls> {
        let mut roots = webpki();
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Protocol(format!("bad CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Protocol(format!("bad CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::Protocol("no CERTIFICATE in the CA PEM".into()));
        }
        Ok(Tls::from_roots(roots))
    }

    fn from_roots(roots: RootCertStore) -> Tls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Tls {
            config: Arc::new(config),
        }
    }

    pub(crate) fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The TLS handshake on `tcp` for `host` (a name or an IP address).
    pub(crate) async fn connect(&self, host: &str, tcp: TcpStream) -> Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| Error::Protocol(format!("invalid TLS server name {host:?}: {e}")))?;
        Ok(TlsConnector::from(self.config()).connect(name, tcp).await?)
    }
}
