//! What a client presented when it connected, as the policy's identities are matched against
//! it: its TLS client certificate (already verified against `--tls-client-ca` by the TLS
//! handshake), its Unix peer uid, or nothing (plain TCP).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A client's credentials, as identities match them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    Certificate {
        /// The subject's common name (the first, as Fabric's tooling writes one).
        cn: Option<String>,
        /// The DNS names of its subjectAltName.
        dns: Vec<String>,
        /// SHA-256 of the certificate (DER), lower-case hex.
        sha256: String,
    },
    Uid(u32),
    /// Plain TCP, or a Unix peer whose uid the kernel did not tell: nothing to match.
    Nothing,
}

impl Presented {
    /// From the identity the connection's transport established: `tcp`, `uid:N`, or a
    /// client certificate (DER).
    pub fn of(identity: &[u8]) -> Self {
        if identity == b"tcp" {
            return Self::Nothing;
        }
        if let Some(uid) = identity.strip_prefix(b"uid:") {
            return std::str::from_utf8(uid)
                .ok()
                .and_then(|u| u.parse().ok())
                .map_or(Self::Nothing, Self::Uid);
        }
        let sha256 = ring::digest::digest(&ring::digest::SHA256, identity)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (cn, dns) = match X509Certificate::from_der(identity) {
            Ok((_, cert)) => {
                let cn = cert
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|a| a.as_str().ok())
                    .map(str::to_string);
                let dns = cert
                    .subject_alternative_name()
                    .ok()
                    .flatten()
                    .map(|san| {
                        san.value
                            .general_names
                            .iter()
                            .filter_map(|n| match n {
                                GeneralName::DNSName(d) => Some(d.to_string()),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (cn, dns)
            }
            Err(_) => (None, Vec::new()),
        };
        Self::Certificate { cn, dns, sha256 }
    }

    /// For log lines: what it presented.
    pub fn describe(&self) -> String {
        match self {
            Self::Certificate { cn, dns, sha256 } => format!(
                "a certificate with CN {}, DNS names [{}], SHA-256 {sha256}",
                cn.as_deref().unwrap_or("(none)"),
                dns.join(", ")
            ),
            Self::Uid(u) => format!("Unix uid {u}"),
            Self::Nothing => "no credentials (plain TCP)".to_string(),
        }
    }
}
