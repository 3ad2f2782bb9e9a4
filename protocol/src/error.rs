//! Errors of the wire layer (framing, handshake, decoding).

use std::fmt;
use std::io;

/// Anything that went wrong below the PKCS#11 layer.
#[derive(Debug)]
pub enum ProtocolError {
    /// The transport failed (connection closed, timeout, reset...).
    Io(io::Error),
    /// A frame announced more bytes than [`crate::frame::MAX_FRAME_LEN`].
    FrameTooLarge { len: u64, max: u32 },
    /// A frame's payload could not be decoded (or encoded) as the expected message.
    Codec(String),
    /// The peer does not speak this protocol (wrong magic).
    BadMagic,
    /// The peer speaks another version of this protocol.
    VersionMismatch { ours: u16, theirs: u16 },
    /// The peer refused the handshake, with its reason.
    Refused(String),
    /// The server cannot take the connection now and says to try again (a flood of new
    /// applications), with its reason.
    Busy(String),
    /// The server does not hold the application's instance (it is on another replica behind
    /// the same address, or gone), or it is stopping, with its reason.
    Elsewhere(String),
    /// The server instance is leaving and did not execute the request
    /// ([`crate::message::Response::Retired`]).
    Retired,
    /// The request could not be sent whole (the server had closed the connection): the
    /// server never read it, so never executed it.
    Unsent(io::Error),
}

impl ProtocolError {
    /// The server certainly did not execute the request: it may be sent again anywhere,
    /// whatever the function.
    pub fn not_executed(&self) -> bool {
        matches!(self, Self::Retired | Self::Unsent(_))
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                write!(f, "connection closed by the peer")
            }
            Self::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                write!(f, "no answer within the timeout")
            }
            Self::Io(e) => write!(f, "transport error: {e}"),
            Self::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max} bytes")
            }
            Self::Codec(e) => write!(f, "malformed message: {e}"),
            Self::BadMagic => write!(f, "peer is not a pkcs11-proxy endpoint (bad magic)"),
            Self::VersionMismatch { ours, theirs } => write!(
                f,
                "protocol version mismatch: we speak {ours}, the peer speaks {theirs}"
            ),
            Self::Refused(reason) => write!(f, "handshake refused by peer: {reason}"),
            Self::Busy(reason) => write!(f, "server busy: {reason}"),
            Self::Elsewhere(reason) => write!(f, "not here: {reason}"),
            Self::Retired => write!(f, "the server instance is leaving; request not executed"),
            Self::Unsent(e) => write!(f, "request not sent ({e}); not executed"),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl From<io::Error> for ProtocolError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}
