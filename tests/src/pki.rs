//! A throwaway PKI for TLS tests, made with rcgen: a CA, a server certificate for 127.0.0.1
//! and localhost, and client certificates (valid, from another CA, expired).

use std::path::{Path, PathBuf};

use cryptoki_sys::CK_RV;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

/// A certificate and its key, written as PEM files.
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and the files of what it signed.
pub struct Pki {
    pub ca: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Pki {
    /// A new CA named `name`, its certificate written in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, issuer.pem()).unwrap();
        Self {
            ca,
            issuer,
            dir: dir.to_path_buf(),
        }
    }

    fn issue(
        &self,
        file: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> Identity {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let id = Identity {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&id.cert, cert.pem()).unwrap();
        std::fs::write(&id.key, key.serialize_pem()).unwrap();
        id
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self, file: &str) -> Identity {
        self.issue(
            file,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        )
    }

    /// A client certificate, valid or expired.
    pub fn client(&self, file: &str, expired: bool) -> Identity {
        self.issue(file, &[], ExtendedKeyUsagePurpose::ClientAuth, expired)
    }

    /// A client certificate with these DNS names in its subjectAltName.
    pub fn client_with_names(&self, file: &str, names: &[&str]) -> Identity {
        self.issue(file, names, ExtendedKeyUsagePurpose::ClientAuth, false)
    }
}

/// An application through the proxy at `socket` (a private copy of the shim), trusting the
/// server's CA `ca` and presenting `client`: C_Initialize's answer and the module.
pub fn tls_client(
    dir: &crate::TempDir,
    socket: &str,
    ca: Option<&Pki>,
    client: Option<&Identity>,
) -> (CK_RV, crate::raw::RawModule) {
    let m = crate::raw::RawModule::load(&crate::private_copy(&crate::shim_path(), dir.path()));
    let ca_path = ca.map(|p| p.ca.to_string_lossy().into_owned());
    let cert = client.map(|c| c.cert.to_string_lossy().into_owned());
    let key = client.map(|c| c.key.to_string_lossy().into_owned());
    let mut env = vec![
        ("PKCS11_PROXY_SOCKET", socket),
        ("PKCS11_PROXY_CONNECT_TIMEOUT_MS", "3000"),
    ];
    if let Some(ca) = &ca_path {
        env.push(("PKCS11_PROXY_TLS_CA", ca));
    }
    if let (Some(c), Some(k)) = (&cert, &key) {
        env.push(("PKCS11_PROXY_TLS_CERT", c));
        env.push(("PKCS11_PROXY_TLS_KEY", k));
    }
    let rv = crate::with_env(&env, || m.initialize());
    (rv, m)
}

/// A server on SoftHSM2 `hsm` with a TLS listener (certificate `server`, client CA `pki`)
/// first and a plain TCP one, and `extra` flags.
pub fn tls_server(
    hsm: &crate::SoftHsm,
    pki: &Pki,
    server: &Identity,
    extra: &[&str],
) -> crate::ProxyServer {
    let (cert, key, ca) = (
        server.cert.to_str().unwrap(),
        server.key.to_str().unwrap(),
        pki.ca.to_str().unwrap(),
    );
    let mut args = vec![
        "--module",
        crate::SOFTHSM,
        "--listen",
        "tls://127.0.0.1:0",
        "--listen",
        "tcp://127.0.0.1:0",
    ];
    args.extend(["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca]);
    args.extend_from_slice(extra);
    crate::ProxyServer::start_with(hsm, &args, &[])
}
