//! TLS towards the server (`tls://` addresses): TLS 1.3 with rustls, the server certificate
//! verified against `PKCS11_PROXY_TLS_CA` and the name in the address, and the client
//! certificate `PKCS11_PROXY_TLS_CERT` / `PKCS11_PROXY_TLS_KEY` presented (the server requires
//! one by default).

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use protocol::stream::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Builds the client configuration from PEM files; the error names the file at fault.
pub fn client_config(
    ca: &Path,
    cert_and_key: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("{}: {e}", ca.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    if cas.is_empty() {
        return Err(format!("{}: no certificate", ca.display()));
    }
    for c in cas {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match cert_and_key {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("{}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
    };
    Ok(Arc::new(config))
}

/// Runs the TLS handshake over `tcp` (bounded by its timeouts) with `host` as the name the
/// server's certificate must carry.
pub fn connect(tcp: TcpStream, host: &str, config: &Arc<ClientConfig>) -> Result<Stream, String> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let raw = tcp.try_clone().map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    Ok(Stream::Tls(Box::new(tls), raw))
}
