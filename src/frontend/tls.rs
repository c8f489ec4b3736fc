//! Client-facing TLS: the rustls acceptor made from `[tls]` (made again at every RELOAD, so a
//! renewed certificate is taken without a restart), the handshake after SSLRequest or a direct
//! TLS hello, and the pump that carries a TLS client's plaintext to its session.
//!
//! The session keeps one stream shape (owned socket halves with a synchronous `try_write`):
//! a TLS client's bytes are decrypted by a pump task and reach the session over a Unix
//! socketpair, so the plaintext path is untouched and TLS costs one local hop per direction.

use crate::config::{ClientTlsMode, TlsConfig};
use arc_swap::ArcSwapOption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// The first byte of a TLS record carrying a handshake: a client that starts TLS directly
/// (PostgreSQL 17's `sslnegotiation=direct`) sends it where a length would be.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The ALPN protocol PostgreSQL clients offer; a direct TLS client must offer it.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why the TLS configuration could not be used: names the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} = {file}: {reason}")]
    File { key: &'static str, file: String, reason: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The acceptor in force (None: TLS disabled) and the mode.
pub struct ClientTls {
    acceptor: ArcSwapOption<Acceptor>,
}

/// One certificate's acceptor, and what SCRAM channel binding needs of it.
pub struct Acceptor {
    pub acceptor: TlsAcceptor,
    pub mode: ClientTlsMode,
    /// RFC 5929 tls-server-end-point: SHA-256 of the leaf certificate (DER).
    pub server_end_point: Vec<u8>,
}

impl ClientTls {
    pub fn new(config: &TlsConfig) -> Result<ClientTls, TlsError> {
        Ok(ClientTls { acceptor: ArcSwapOption::new(Acceptor::load(config)?.map(Arc::new)) })
    }

    /// RELOAD: `acceptor` (loaded before anything else was applied) serves new connections.
    pub fn install(&self, acceptor: Option<Acceptor>) {
        self.acceptor.store(acceptor.map(Arc::new));
    }

    /// The acceptor for a new connection (None: TLS disabled).
    pub fn current(&self) -> Option<Arc<Acceptor>> {
        self.acceptor.load_full()
    }

    /// The mode for a new connection.
    pub fn mode(&self) -> ClientTlsMode {
        self.acceptor.load().as_ref().map_or(ClientTlsMode::Disable, |a| a.mode)
    }
}

impl Acceptor {
    /// The acceptor `config` describes; None when client TLS is disabled.
    pub fn load(config: &TlsConfig) -> Result<Option<Acceptor>, TlsError> {
        let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else { return Ok(None) };
        if config.mode() == ClientTlsMode::Disable {
            return Ok(None);
        }
        let certs = read_certs("tls.cert_file", cert_file)?;
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| file_error("tls.key_file", key_file, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match &config.ca_file {
            Some(ca_file) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs("tls.ca_file", ca_file)? {
                    roots.add(cert).map_err(|e| file_error("tls.ca_file", ca_file, e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| file_error("tls.ca_file", ca_file, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let leaf = certs[0].clone();
        let mut server = builder.with_single_cert(certs, key).map_err(|e| file_error("tls.key_file", key_file, e))?;
        server.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        let server_end_point = tls_server_end_point(leaf.as_ref());
        Ok(Some(Acceptor { acceptor: TlsAcceptor::from(Arc::new(server)), mode: config.mode(), server_end_point }))
    }

    /// Runs the TLS handshake on `tcp`, then carries its plaintext to and from `session` (the
    /// session's socketpair) on a task of its own. `direct`: the client started TLS without
    /// SSLRequest, so it must offer ALPN `postgresql`, as PostgreSQL requires.
    pub async fn accept(&self, tcp: TcpStream, session: UnixStream, direct: bool) -> std::io::Result<()> {
        let tls = self.acceptor.accept(tcp).await?;
        if direct && tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "direct TLS without ALPN \"postgresql\" (PostgreSQL clients send it)",
            ));
        }
        tokio::spawn(crate::socket::pump(tls, session, "client"));
        Ok(())
    }
}

fn read_certs(key: &'static str, file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|e| file_error(key, file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(key, file, e))?;
    if certs.is_empty() {
        return Err(file_error(key, file, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn file_error(key: &'static str, file: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File { key, file: file.display().to_string(), reason: reason.to_string() }
}

/// RFC 5929 `tls-server-end-point` for a certificate (DER): its hash under the digest of its
/// signature algorithm, SHA-256 for MD5, SHA-1 and SHA-256 alike (as PostgreSQL computes it).
/// The algorithm is found by its OID, which a certificate carries twice (tbsCertificate's
/// `signature` and the outer `signatureAlgorithm`), never in a key or name.
pub fn tls_server_end_point(der: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], // sha384WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],       // ecdsa-with-SHA384
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], // sha512WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],       // ecdsa-with-SHA512
    ];
    let signed_with = |oids: [&[u8]; 2]| oids.iter().any(|oid| der.windows(oid.len()).any(|w| w == *oid));
    if signed_with(SHA512) {
        sha2::Sha512::digest(der).to_vec()
    } else if signed_with(SHA384) {
        sha2::Sha384::digest(der).to_vec()
    } else {
        sha2::Sha256::digest(der).to_vec()
    }
}
