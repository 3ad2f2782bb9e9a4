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

/// A server with TLS and a policy (`--policy`), on its own SoftHSM2 token, and clients that
/// present certificates of its CA by common name.
pub struct PolicyServer {
    pub hsm: crate::SoftHsm,
    pub dir: crate::TempDir,
    pub pki: Pki,
    pub server: crate::ProxyServer,
    pub policy_file: PathBuf,
}

impl PolicyServer {
    /// A server named `tag` with the policy `policy` (TOML) and `extra` flags.
    pub fn start(tag: &str, policy: &str, extra: &[&str]) -> Self {
        Self::start_on(crate::SoftHsm::new(tag), tag, policy, extra)
    }

    /// [`PolicyServer::start`] on the token(s) of `hsm`.
    pub fn start_on(hsm: crate::SoftHsm, tag: &str, policy: &str, extra: &[&str]) -> Self {
        let dir = crate::TempDir::new(tag);
        let pki = Pki::new(dir.path(), tag);
        let server_id = pki.server("server");
        let policy_file = dir.path().join("policy.toml");
        std::fs::write(&policy_file, policy).unwrap();
        let mut args = vec!["--policy", policy_file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let server = tls_server(&hsm, &pki, &server_id, &args);
        Self {
            hsm,
            dir,
            pki,
            server,
            policy_file,
        }
    }

    /// An application presenting a certificate with CN `cn`: C_Initialize's answer.
    pub fn connect(&self, cn: &str) -> (CK_RV, crate::raw::RawModule) {
        self.connect_as(&self.pki.client(cn, false))
    }

    /// An application presenting `id`: C_Initialize's answer.
    pub fn connect_as(&self, id: &Identity) -> (CK_RV, crate::raw::RawModule) {
        tls_client(&self.dir, &self.server.address, Some(&self.pki), Some(id))
    }

    /// An initialised application of CN `cn`.
    pub fn client(&self, cn: &str) -> crate::raw::RawModule {
        let (rv, m) = self.connect(cn);
        assert_eq!(rv, cryptoki_sys::CKR_OK, "{cn}");
        m
    }

    /// An application of CN `cn` with an RW session on its first slot (not logged in).
    pub fn app(&self, cn: &str) -> (crate::raw::RawModule, cryptoki_sys::CK_SESSION_HANDLE) {
        let m = self.client(cn);
        let s = m.open_rw(m.first_slot());
        (m, s)
    }
}
