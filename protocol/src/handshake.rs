//! The first exchange on every connection.
//!
//! Both messages have a fixed binary layout that no future version may change, so that a peer of
//! another version is always recognised and refused with a clear message:
//!
//! Every connection starts with a plaintext [`Prelude`] (42 bytes, not a frame):
//! `route_magic[8] | version u16 LE | routing_id[16] | instance_id[16]`. It is read by the
//! server's router before any TLS handshake, to hand the connection to the application's
//! worker process (DESIGN.md, "Server semantics"). The routing id is a one-way function of
//! the secret client id, so knowing it gives nothing: the worker checks that the client id of
//! the hello, sent later (inside TLS on `tls://`), matches it. The instance id names the
//! worker the application is on (all zeros: none yet, or moving): a router that does not
//! hold that worker answers "elsewhere" at once, before TLS, without starting one, so that
//! an application behind a load balancer stays with its instance (DESIGN.md, "Shim
//! semantics").
//!
//! `Hello` (client to server), 40 bytes:
//! `magic[8] | version u16 LE | ulong_size u8 | reserved u8 | client_id[16] |`
//! `init_present u8 | init_callbacks u8 | init_reserved u8 | 0 u8 | init_flags u64 LE`
//!
//! The `init_*` fields are the shape of the application's `CK_C_INITIALIZE_ARGS` (PKCS#11
//! v2.40 §5.4.1): whether the pointer was NULL, which of the four mutex callbacks were set (bit
//! 0 CreateMutex, 1 DestroyMutex, 2 LockMutex, 3 UnlockMutex), whether `pReserved` was set, and
//! the flags. The worker C_Initializes the vendor library with that shape on the first hello.
//!
//! `Welcome` (server to client):
//! `magic[8] | version u16 LE | status u8 | instance_id[16] | init_rv u64 LE` (status 0,
//! accepted; `init_rv` is the vendor library's answer to C_Initialize) or
//! `magic[8] | version u16 LE | status u8 | reason (UTF-8, rest of frame)` (status 1, refused).

use serde::{Deserialize, Serialize};

use crate::ProtocolError;

/// Identifies this protocol on the wire.
pub const MAGIC: [u8; 8] = *b"P11PROXY";
/// Identifies the routing prelude.
pub const ROUTE_MAGIC: [u8; 8] = *b"P11ROUTE";
/// The protocol version this build speaks. Bumped on any incompatible message change.
/// Version 2: routing prelude, C_Initialize arguments in the hello, the vendor's C_Initialize
/// answer in the welcome. Version 3: pointer arguments keep their shape (`crate::shape`), the
/// prelude names the instance the application is on.
pub const VERSION: u16 = 3;

/// Length of the routing prelude.
pub const PRELUDE_LEN: usize = 42;
/// Length of the part every version of the prelude shares: the magic and the version.
pub const PRELUDE_HEAD_LEN: usize = 10;
const HELLO_LEN: usize = 40;
const WELCOME_LEN: usize = 35;
const STATUS_ACCEPTED: u8 = 0;
const STATUS_REFUSED: u8 = 1;
/// A route answer only: the router cannot start the application's worker now; try again.
const STATUS_BUSY: u8 = 2;
/// A route answer only: this server does not hold the instance the prelude named.
const STATUS_ELSEWHERE: u8 = 3;

/// A 128-bit random secret naming one application (one shim instance), whatever number of
/// connections it opens.
pub type ClientId = [u8; 16];

/// The version in bytes 8 and 9 (after the magic) of any of these messages, if it is ours;
/// another is told apart from garbage, so that the peer gets a clear refusal.
fn same_version(bytes: &[u8]) -> Result<u16, ProtocolError> {
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(ProtocolError::VersionMismatch {
            ours: VERSION,
            theirs: version,
        });
    }
    Ok(version)
}

/// A non-secret name of an application, derived from its client id, that routes its
/// connections to its worker before any TLS handshake.
pub type RoutingId = [u8; 16];

/// The routing id of `client_id`: the first 16 bytes of
/// SHA-256("pkcs11-proxy routing id v2" || client_id). One-way, so that seeing it on the wire
/// (it travels in clear, before TLS) does not reveal the client id.
pub fn routing_id(client_id: &ClientId) -> RoutingId {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"pkcs11-proxy routing id v2");
    ctx.update(client_id);
    let digest = ctx.finish();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.as_ref()[..16]);
    id
}

/// A server instance id: new for every worker (every server start, every worker started
/// after a crash); all zeros names none.
pub type InstanceId = [u8; 16];

/// The routing prelude: the first bytes on every connection, before TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prelude {
    pub routing_id: RoutingId,
    /// The instance the application is on: only its worker may take the connection. All
    /// zeros: any (the application's first connection, or it is moving).
    pub instance: InstanceId,
}

impl Prelude {
    /// A prelude that asks the router which interface the vendor library offers (answered
    /// in the route answer, then closed): what C_GetInterfaceList needs before C_Initialize,
    /// without starting a worker. Its routing id (all zeros) names no application.
    pub fn interface_query() -> Self {
        Self::default()
    }

    /// Whether this is [`Prelude::interface_query`].
    pub fn is_interface_query(&self) -> bool {
        self.routing_id == [0; 16]
    }

    pub fn encode(&self) -> [u8; PRELUDE_LEN] {
        let mut out = [0u8; PRELUDE_LEN];
        out[..8].copy_from_slice(&ROUTE_MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[10..26].copy_from_slice(&self.routing_id);
        out[26..].copy_from_slice(&self.instance);
        out
    }

    /// Checks the part of a prelude every version shares (its first [`PRELUDE_HEAD_LEN`]
    /// bytes), so that a peer of another version, whose prelude may be shorter, is refused
    /// at once rather than waited for.
    pub fn check_head(bytes: &[u8]) -> Result<(), ProtocolError> {
        if bytes.len() < PRELUDE_HEAD_LEN || bytes[..8] != ROUTE_MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        same_version(bytes).map(|_| ())
    }

    /// Parses a prelude; a peer of another version is told apart from garbage.
    pub fn decode(bytes: &[u8; PRELUDE_LEN]) -> Result<Self, ProtocolError> {
        Self::check_head(bytes)?;
        let mut p = Self::default();
        p.routing_id.copy_from_slice(&bytes[10..26]);
        p.instance.copy_from_slice(&bytes[26..]);
        Ok(p)
    }
}

/// The router's answer to a prelude, before anything else (and before TLS):
/// `route_magic[8] | version u16 LE | status u8 | interface_major u8 | interface_minor u8`
/// (status 0: handed to the application's worker, which answers everything after; the
/// version of the vendor library's "PKCS 11" interface, 0.0 if unknown), or, refused,
/// `route_magic[8] | version u16 LE | 1 | reason_len u16 LE | reason (UTF-8)`, or, busy (try
/// again shortly), the same with status 2, or, elsewhere (this server does not hold the
/// instance the prelude named), the same with status 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAnswer {
    Routed { interface: (u8, u8) },
    Refused(String),
    Busy(String),
    Elsewhere(String),
}

/// Length of a route answer's fixed part (a refusal has a different length).
pub const ROUTE_ANSWER_LEN: usize = 13;

impl RouteAnswer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ROUTE_ANSWER_LEN);
        out.extend_from_slice(&ROUTE_MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        match self {
            Self::Routed { interface } => {
                out.push(STATUS_ACCEPTED);
                out.push(interface.0);
                out.push(interface.1);
            }
            Self::Refused(reason) | Self::Busy(reason) | Self::Elsewhere(reason) => {
                out.push(match self {
                    Self::Busy(_) => STATUS_BUSY,
                    Self::Elsewhere(_) => STATUS_ELSEWHERE,
                    _ => STATUS_REFUSED,
                });
                let reason = &reason.as_bytes()[..reason.len().min(1024)];
                out.extend_from_slice(&(reason.len() as u16).to_le_bytes());
                out.extend_from_slice(reason);
            }
        }
        out
    }

    /// Reads a route answer from `r`, reading no byte past it (TLS may follow).
    pub fn read(r: &mut impl std::io::Read) -> Result<Self, ProtocolError> {
        let mut head = [0u8; 11];
        r.read_exact(&mut head)?;
        if head[..8] != ROUTE_MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        same_version(&head)?;
        match head[10] {
            STATUS_ACCEPTED => {
                let mut interface = [0u8; 2];
                r.read_exact(&mut interface)?;
                Ok(Self::Routed {
                    interface: (interface[0], interface[1]),
                })
            }
            status @ (STATUS_REFUSED | STATUS_BUSY | STATUS_ELSEWHERE) => {
                let mut len = [0u8; 2];
                r.read_exact(&mut len)?;
                let mut reason = vec![0u8; usize::from(u16::from_le_bytes(len)).min(1024)];
                r.read_exact(&mut reason)?;
                let reason = String::from_utf8_lossy(&reason).into_owned();
                Ok(match status {
                    STATUS_BUSY => Self::Busy(reason),
                    STATUS_ELSEWHERE => Self::Elsewhere(reason),
                    _ => Self::Refused(reason),
                })
            }
            _ => Err(ProtocolError::Codec("malformed route answer".into())),
        }
    }
}

/// Whether the first bytes of a connection are a version-1 hello frame (a length prefix and
/// [`MAGIC`]): a peer from before the routing prelude, to be refused in its own terms.
pub fn is_v1_hello(first: &[u8]) -> bool {
    first.len() >= 12 && first[4..12] == MAGIC
}

/// The shape of an application's `CK_C_INITIALIZE_ARGS` (PKCS#11 v2.40 §5.4.1), which the
/// worker reproduces for the vendor library: the same flags, its own OS mutexes in place of
/// each callback the application set, and a non-NULL `pReserved` where the application's was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitArgs {
    pub flags: u64,
    /// Bit 0 CreateMutex, 1 DestroyMutex, 2 LockMutex, 3 UnlockMutex.
    pub callbacks: u8,
    /// `pReserved` was not NULL.
    pub reserved: bool,
}

/// What the client announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// `sizeof(CK_ULONG)` on the client, for width conversions of attribute lengths.
    pub ulong_size: u8,
    pub client_id: ClientId,
    /// The application's C_Initialize arguments (`None`: a NULL pointer).
    pub init: Option<InitArgs>,
    /// The shim records token objects for recovery: the worker sends the identity of each
    /// object it hands out ([`crate::message::Response::Identified`]).
    pub identify_objects: bool,
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Welcome {
    /// Accepted; `instance_id` is new for every worker (every server start, every worker
    /// started after a crash); `init_rv` is the vendor library's answer to C_Initialize.
    Accepted {
        version: u16,
        instance_id: [u8; 16],
        init_rv: u64,
    },
    /// Refused, with a reason meant for a log line.
    Refused { version: u16, reason: String },
}

/// An accepted welcome, as the client reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub instance_id: [u8; 16],
    pub init_rv: u64,
}

impl Hello {
    /// A hello of this build's version.
    pub fn new(ulong_size: u8, client_id: ClientId, init: Option<InitArgs>) -> Self {
        Self {
            version: VERSION,
            ulong_size,
            client_id,
            init,
            identify_objects: false,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(self.ulong_size);
        out.push(u8::from(self.identify_objects) * HELLO_IDENTIFY_OBJECTS);
        out.extend_from_slice(&self.client_id);
        let init = self.init.unwrap_or(InitArgs {
            flags: 0,
            callbacks: 0,
            reserved: false,
        });
        out.push(u8::from(self.init.is_some()));
        out.push(init.callbacks);
        out.push(u8::from(init.reserved));
        out.push(0);
        out.extend_from_slice(&init.flags.to_le_bytes());
        out
    }

    /// Parses a hello; a wrong magic or length is an error, a different version is not (the
    /// server answers it with a clear refusal).
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() < 10 || bytes[..8] != MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        let version = same_version(bytes)?;
        if bytes.len() != HELLO_LEN {
            return Err(ProtocolError::Codec(format!(
                "hello of {} bytes, expected {HELLO_LEN}",
                bytes.len()
            )));
        }
        if bytes[11] & !HELLO_IDENTIFY_OBJECTS != 0 {
            return Err(ProtocolError::Codec(format!(
                "unknown hello flags {:#04x}",
                bytes[11]
            )));
        }
        let mut client_id = [0u8; 16];
        client_id.copy_from_slice(&bytes[12..28]);
        let mut flags = [0u8; 8];
        flags.copy_from_slice(&bytes[32..40]);
        let init = match bytes[28] {
            0 => None,
            1 if bytes[29] <= 0xF && bytes[30] <= 1 => Some(InitArgs {
                flags: u64::from_le_bytes(flags),
                callbacks: bytes[29],
                reserved: bytes[30] == 1,
            }),
            _ => {
                return Err(ProtocolError::Codec(
                    "malformed C_Initialize arguments in hello".into(),
                ))
            }
        };
        Ok(Self {
            version,
            ulong_size: bytes[10],
            client_id,
            init,
            identify_objects: bytes[11] & HELLO_IDENTIFY_OBJECTS != 0,
        })
    }
}

/// Hello flag: [`Hello::identify_objects`].
const HELLO_IDENTIFY_OBJECTS: u8 = 1;

impl Welcome {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(WELCOME_LEN);
        out.extend_from_slice(&MAGIC);
        match self {
            Self::Accepted {
                version,
                instance_id,
                init_rv,
            } => {
                out.extend_from_slice(&version.to_le_bytes());
                out.push(STATUS_ACCEPTED);
                out.extend_from_slice(instance_id);
                out.extend_from_slice(&init_rv.to_le_bytes());
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
    /// error; returns the server's instance id and the vendor's C_Initialize answer.
    pub fn decode_accepted(bytes: &[u8]) -> Result<Accepted, ProtocolError> {
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
            STATUS_ACCEPTED if bytes.len() == WELCOME_LEN => {
                let mut instance_id = [0u8; 16];
                instance_id.copy_from_slice(&bytes[11..27]);
                let mut rv = [0u8; 8];
                rv.copy_from_slice(&bytes[27..35]);
                Ok(Accepted {
                    instance_id,
                    init_rv: u64::from_le_bytes(rv),
                })
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
        let hello = Hello::new(8, [7; 16], None);
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
        let init = InitArgs {
            flags: 2,
            callbacks: 0b1010,
            reserved: true,
        };
        let hello = Hello::new(4, [9; 16], Some(init));
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
    }

    #[test]
    fn route_answers_round_trip() {
        for a in [
            RouteAnswer::Routed { interface: (3, 0) },
            RouteAnswer::Refused("too many".into()),
            RouteAnswer::Busy("try again".into()),
            RouteAnswer::Elsewhere("not here".into()),
        ] {
            let bytes = a.encode();
            assert_eq!(RouteAnswer::read(&mut bytes.as_slice()).unwrap(), a);
        }
    }

    #[test]
    fn prelude_round_trip_and_routing_id_is_one_way_and_stable() {
        let p = Prelude {
            routing_id: routing_id(&[1; 16]),
            instance: [5; 16],
        };
        assert_eq!(Prelude::decode(&p.encode()).unwrap(), p);
        assert!(Prelude::check_head(&p.encode()[..PRELUDE_HEAD_LEN]).is_ok());
        assert_eq!(routing_id(&[1; 16]), routing_id(&[1; 16]));
        assert_ne!(routing_id(&[1; 16]), routing_id(&[2; 16]));
        assert_ne!(routing_id(&[1; 16]), [1; 16]);
        let mut old = p.encode();
        old[8] = 1;
        assert!(matches!(
            Prelude::decode(&old),
            Err(ProtocolError::VersionMismatch { theirs: 1, .. })
        ));
        assert!(matches!(
            Prelude::check_head(&old[..PRELUDE_HEAD_LEN]),
            Err(ProtocolError::VersionMismatch { theirs: 1, .. })
        ));
    }

    #[test]
    fn other_version_is_recognised() {
        let mut bytes = Hello::new(8, [7; 16], None).encode();
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
            init_rv: 0x191,
        };
        let a = Welcome::decode_accepted(&ok.encode()).unwrap();
        assert_eq!((a.instance_id, a.init_rv), ([3; 16], 0x191));
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
