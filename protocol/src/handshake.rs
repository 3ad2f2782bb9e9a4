//! The first exchange on every connection.
//!
//! Both messages have a fixed binary layout that no future version may change, so that a peer of
//! another version is always recognised and refused with a clear message:
//!
//! `Hello` (client to server), 28 bytes:
//! `magic[8] | version u16 LE | ulong_size u8 | reserved u8 | client_id[16]`
//!
//! `Welcome` (server to client):
//! `magic[8] | version u16 LE | status u8 | instance_id[16]` (status 0, accepted) or
//! `magic[8] | version u16 LE | status u8 | reason (UTF-8, rest of frame)` (status 1, refused).

use crate::ProtocolError;

/// Identifies this protocol on the wire.
pub const MAGIC: [u8; 8] = *b"P11PROXY";
/// The protocol version this build speaks. Bumped on any incompatible message change.
pub const VERSION: u16 = 1;

const HELLO_LEN: usize = 28;
const STATUS_ACCEPTED: u8 = 0;
const STATUS_REFUSED: u8 = 1;

/// A 128-bit random secret naming one application (one shim instance), whatever number of
/// connections it opens.
pub type ClientId = [u8; 16];

/// What the client announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// `sizeof(CK_ULONG)` on the client, for width conversions of attribute lengths.
    pub ulong_size: u8,
    pub client_id: ClientId,
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Welcome {
    /// Accepted; `instance_id` is new at every server start.
    Accepted { version: u16, instance_id: [u8; 16] },
    /// Refused, with a reason meant for a log line.
    Refused { version: u16, reason: String },
}

impl Hello {
    /// A hello of this build's version.
    pub fn new(ulong_size: u8, client_id: ClientId) -> Self {
        Self {
            version: VERSION,
            ulong_size,
            client_id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(self.ulong_size);
        out.push(0);
        out.extend_from_slice(&self.client_id);
        out
    }

    /// Parses a hello; a wrong magic or length is an error, a different version is not (the
    /// server answers it with a clear refusal).
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() < 10 || bytes[..8] != MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(ProtocolError::VersionMismatch {
                ours: VERSION,
                theirs: version,
            });
        }
        if bytes.len() != HELLO_LEN {
            return Err(ProtocolError::Codec(format!(
                "hello of {} bytes, expected {HELLO_LEN}",
                bytes.len()
            )));
        }
        let mut client_id = [0u8; 16];
        client_id.copy_from_slice(&bytes[12..28]);
        Ok(Self {
            version,
            ulong_size: bytes[10],
            client_id,
        })
    }
}

impl Welcome {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(27);
        out.extend_from_slice(&MAGIC);
        match self {
            Self::Accepted {
                version,
                instance_id,
            } => {
                out.extend_from_slice(&version.to_le_bytes());
                out.push(STATUS_ACCEPTED);
                out.extend_from_slice(instance_id);
            }
            Self::Refused { version, reason } => {
                out.extend_from_slice(&version.to_le_bytes());
                out.push(STATUS_REFUSED);
                out.extend_from_slice(reason.as_bytes());
            }
        }
        out
    }

    /// Parses the server's answer and turns anything but an acceptance at our version into an
    /// error; returns the server's instance id.
    pub fn decode_accepted(bytes: &[u8]) -> Result<[u8; 16], ProtocolError> {
        if bytes.len() < 11 || bytes[..8] != MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        match bytes[10] {
            STATUS_REFUSED => Err(ProtocolError::Refused(
                String::from_utf8_lossy(&bytes[11..]).into_owned(),
            )),
            _ if version != VERSION => Err(ProtocolError::VersionMismatch {
                ours: VERSION,
                theirs: version,
            }),
            STATUS_ACCEPTED if bytes.len() == 27 => {
                let mut id = [0u8; 16];
                id.copy_from_slice(&bytes[11..27]);
                Ok(id)
            }
            _ => Err(ProtocolError::Codec("malformed welcome".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip() {
        let hello = Hello::new(8, [7; 16]);
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
    }

    #[test]
    fn other_version_is_recognised() {
        let mut bytes = Hello::new(8, [7; 16]).encode();
        bytes[8] = 99;
        assert!(matches!(
            Hello::decode(&bytes),
            Err(ProtocolError::VersionMismatch { theirs: 99, .. })
        ));
    }

    #[test]
    fn bad_magic_is_refused() {
        assert!(matches!(
            Hello::decode(b"GET / HTTP/1.1\r\n\r\n"),
            Err(ProtocolError::BadMagic)
        ));
    }

    #[test]
    fn welcome_round_trip_and_refusal() {
        let ok = Welcome::Accepted {
            version: VERSION,
            instance_id: [3; 16],
        };
        assert_eq!(Welcome::decode_accepted(&ok.encode()).unwrap(), [3; 16]);
        let no = Welcome::Refused {
            version: VERSION,
            reason: "version 2 not supported".into(),
        };
        match Welcome::decode_accepted(&no.encode()) {
            Err(ProtocolError::Refused(r)) => assert!(r.contains("not supported")),
            other => panic!("unexpected {other:?}"),
        }
    }
}
