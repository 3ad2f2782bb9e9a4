//! A throwaway PKI for TLS tests, made with rcgen: a CA, a server certificate for 127.0.0.1
//! and localhost, and client certificates (valid, from another CA, expired).

use std::path::{Path, PathBuf};

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
}
