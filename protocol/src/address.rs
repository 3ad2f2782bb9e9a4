//! Addresses of a proxy server, shared by both sides (`DESIGN.md`, "Addresses").
//!
//! - `tcp://HOST:PORT`: HOST a name, an IPv4 address or `[IPv6]`; every resolved address is tried.
//! - `unix:///absolute/path`: a Unix-domain socket.
//! - `/absolute/path`: the old C proxy's bare form, taken as a Unix socket path *as given*. The
//!   old proxy appended `.pkcs11` to bare paths; we do not, so the path in the configuration is
//!   the path on disk, and an operator never has to guess a suffix.

use std::fmt;
use std::path::PathBuf;

/// A parsed server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// Host (name or IP literal without brackets) and port.
    Tcp { host: String, port: u16 },
    /// TLS 1.3 over TCP: host (also the name the server certificate must carry) and port.
    Tls { host: String, port: u16 },
    /// Absolute path of a Unix-domain socket.
    Unix(PathBuf),
}

impl Address {
    /// Parses one address; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let tcp_or_tls = text
            .strip_prefix("tcp://")
            .map(|r| ("tcp", r))
            .or_else(|| text.strip_prefix("tls://").map(|r| ("tls", r)));
        if let Some((scheme, rest)) = tcp_or_tls {
            let (host, port) = split_host_port(rest)
                .ok_or_else(|| format!("`{text}`: expected {scheme}://HOST:PORT"))?;
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("`{text}`: port `{port}` is not a number from 0 to 65535"))?;
            if host.is_empty() {
                return Err(format!("`{text}`: empty host"));
            }
            let host = host.to_string();
            Ok(if scheme == "tls" {
                Self::Tls { host, port }
            } else {
                Self::Tcp { host, port }
            })
        } else if let Some(path) = text.strip_prefix("unix://") {
            Self::unix_path(text, path)
        } else if text.starts_with('/') {
            Self::unix_path(text, text)
        } else {
            Err(format!(
                "`{text}`: unsupported address (use tcp://HOST:PORT, tls://HOST:PORT, unix:///path or /path)"
            ))
        }
    }

    /// Parses a comma-separated list (failover order), refusing an empty list.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        let list = text
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err("no address given".into());
        }
        Ok(list)
    }

    fn unix_path(text: &str, path: &str) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!("`{text}`: a Unix socket path must be absolute"));
        }
        Ok(Self::Unix(PathBuf::from(path)))
    }
}

fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        Some((host, port))
    } else {
        let (host, port) = s.rsplit_once(':')?;
        if host.contains(':') {
            return None; // an IPv6 literal must be bracketed
        }
        Some((host, port))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::Tls { host, port } if host.contains(':') => write!(f, "tls://[{host}]:{port}"),
            Self::Tls { host, port } => write!(f, "tls://{host}:{port}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form() {
        assert_eq!(
            Address::parse("tcp://172.21.191.187:2345").unwrap(),
            Address::Tcp {
                host: "172.21.191.187".into(),
                port: 2345
            }
        );
        assert_eq!(
            Address::parse("tcp://[::1]:2345").unwrap(),
            Address::Tcp {
                host: "::1".into(),
                port: 2345
            }
        );
        assert_eq!(
            Address::parse("tcp://hsm-proxy.local:1")
                .unwrap()
                .to_string(),
            "tcp://hsm-proxy.local:1"
        );
        assert_eq!(
            Address::parse("unix:///run/p.sock").unwrap(),
            Address::Unix("/run/p.sock".into())
        );
        assert_eq!(
            Address::parse("/run/p.sock").unwrap(),
            Address::Unix("/run/p.sock".into())
        );
    }

    #[test]
    fn tls_addresses() {
        assert_eq!(
            Address::parse("tls://hsm.example:2345").unwrap(),
            Address::Tls {
                host: "hsm.example".into(),
                port: 2345
            }
        );
        assert_eq!(
            Address::parse("tls://[::1]:1").unwrap().to_string(),
            "tls://[::1]:1"
        );
    }

    #[test]
    fn refuses_bad_forms_with_a_reason() {
        for bad in [
            "tcp://host",
            "tcp://::1:80",
            "tcp://h:99999",
            "unix://rel",
            "http://x:1",
            "",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Address::parse_list("tcp://a:1, tcp://b:2").unwrap().len(),
            2
        );
        assert!(Address::parse_list(" , ").is_err());
    }
}
