//! TLS to the servers (rustls, ring): what a node's `tls` mode asks for, as libpq's sslmode does,
//! and the SSLRequest exchange that starts it on a new connection.

use crate::config::ServerTlsMode;
use crate::socket::{SocketReader, SocketWriter};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// A node's TLS settings, as its `[[nodes]]` entry gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    pub ca_file: Option<PathBuf>,
}

/// A connection as it is after the SSLRequest exchange.
pub enum Started {
    Plain(TcpStream),
    /// Encrypted: the plaintext halves, a pump task carrying them through TLS.
    Tls(SocketReader, SocketWriter),
}

impl ServerTls {
    /// The rustls configuration for this mode (None: disable). verify-full checks the chain
    /// against `ca_file` and the host name; prefer and require encrypt without checking, as
    /// libpq does without a root certificate.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match self.mode {
            ServerTlsMode::Disable => return Ok(None),
            ServerTlsMode::Prefer | ServerTlsMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
                .with_no_client_auth(),
            ServerTlsMode::VerifyFull => {
                let ca_file = self.ca_file.as_deref().ok_or("tls = \"verify-full\" needs ca_file")?;
                builder.with_root_certificates(roots(ca_file)?).with_no_client_auth()
            }
        };
        Ok(Some(Arc::new(config)))
    }

    /// Asks `tcp` for TLS (SSLRequest) and runs the handshake when the server agrees; a server
    /// that refuses is used in plain text only in prefer mode.
    pub async fn start(&self, mut tcp: TcpStream, host: &str) -> Result<Started, String> {
        let Some(config) = self.client_config()? else { return Ok(Started::Plain(tcp)) };
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.map_err(|e| e.to_string())?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(|e| e.to_string())?;
        match answer[0] {
            b'S' => {}
            b'N' if self.mode == ServerTlsMode::Prefer => return Ok(Started::Plain(tcp)),
            b'N' => return Err(format!("the server does not accept TLS (tls = \"{}\")", self.mode.label())),
            other => return Err(format!("unexpected answer {other:#04x} to SSLRequest")),
        }
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("host {host:?}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let ((reader, writer), pump_end) = crate::socket::tls_pair().map_err(|e| e.to_string())?;
        tokio::spawn(crate::socket::pump(tls, pump_end, "server"));
        Ok(Started::Tls(reader, writer))
    }
}

fn roots(ca_file: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", ca_file.display()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no PEM certificate in it", ca_file.display()));
    }
    Ok(roots)
}

/// prefer/require: any certificate is taken (the connection is encrypted, the server not
/// authenticated), its handshake signatures still checked.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
