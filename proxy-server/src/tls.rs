//! TLS for `tls://` listeners: TLS 1.3 with rustls (1.2 only with `--tls12`), the server's
//! certificate and key from PEM files, and client certificates required and verified against
//! `--tls-client-ca` (mutual TLS). The configuration can be rebuilt from the same files on
//! SIGHUP; live connections keep the one they started with. The router checks the files at
//! start; each worker loads them and does the handshakes of its own connections.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use protocol::stream::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

/// Where the TLS material lives, to load it at start and again on SIGHUP.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// Accept TLS 1.2 as well as 1.3.
    pub allow_tls12: bool,
}

fn certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let list = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if list.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(list)
}

impl TlsFiles {
    /// Builds the server configuration; the error names the file at fault.
    pub fn load(&self) -> Result<Arc<ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in certs(&self.client_ca)? {
            roots
                .add(c)
                .map_err(|e| format!("{}: {e}", self.client_ca.display()))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("{}: {e}", self.client_ca.display()))?;
        let versions: &[&rustls::SupportedProtocolVersion] = if self.allow_tls12 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("{}: {e}", self.key.display()))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&self.cert)?, key)
            .map_err(|e| format!("{}: {e}", self.cert.display()))?;
        Ok(Arc::new(config))
    }
}

/// The live configuration of a TLS listener.
pub struct TlsListener {
    pub files: TlsFiles,
    pub config: RwLock<Arc<ServerConfig>>,
}

impl TlsListener {
    pub fn new(files: TlsFiles) -> Result<Self, String> {
        let config = files.load()?;
        Ok(Self {
            files,
            config: RwLock::new(config),
        })
    }

    /// Reloads the certificate, key and client CA (SIGHUP); on error the old ones stay.
    pub fn reload(&self) -> Result<(), String> {
        *self.config.write() = self.files.load()?;
        Ok(())
    }

    /// Starts a session on an accepted socket; the handshake runs in [`handshake`].
    pub fn session(&self) -> Result<ServerConnection, String> {
        ServerConnection::new(self.config.read().clone()).map_err(|e| e.to_string())
    }
}

/// Completes the TLS handshake (bounded by the socket's read timeout) and returns the stream
/// and the client's certificate (DER), its identity.
pub fn handshake(conn: Box<ServerConnection>, tcp: TcpStream) -> Result<(Stream, Vec<u8>), String> {
    let raw = tcp.try_clone().map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(*conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    let identity = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or("TLS handshake: no client certificate")?;
    Ok((Stream::Tls(Box::new(tls), raw), identity))
}
