//! Length-prefixed frames: a 4-byte little-endian payload length, then the payload.

use std::io::{Read, Write};

use crate::ProtocolError;

/// Hard maximum payload size of one frame (16 MiB), checked before any allocation.
///
/// Large enough for any realistic PKCS#11 call (certificates, wrapped keys, bulk encryption
/// chunks); a caller buffer larger than this is served up to this size only.
pub const MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// Room left in a frame for the message envelope around a data buffer.
pub const MAX_DATA_LEN: u64 = (MAX_FRAME_LEN as u64) - 64 * 1024;

/// Writes `payload` as one frame with a single `write_all` (header and payload together), so a
/// frame costs one system call on an unbuffered socket.
///
/// `scratch` is reused between calls to avoid an allocation per frame.
pub fn write_frame<W: Write>(
    w: &mut W,
    payload: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME_LEN)
        .ok_or(ProtocolError::FrameTooLarge {
            len: payload.len() as u64,
            max: MAX_FRAME_LEN,
        })?;
    scratch.clear();
    scratch.extend_from_slice(&len.to_le_bytes());
    scratch.extend_from_slice(payload);
    w.write_all(scratch)?;
    Ok(())
}

/// Reads one frame into `buf` (cleared first), refusing a length above `max` before
/// allocating anything; the buffer grows only as the payload arrives.
pub fn read_frame<R: Read>(r: &mut R, buf: &mut Vec<u8>, max: u32) -> Result<(), ProtocolError> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header)?;
    let len = u32::from_le_bytes(header);
    if len > max {
        return Err(ProtocolError::FrameTooLarge {
            len: u64::from(len),
            max,
        });
    }
    // Grow with the data that really arrives, not with the length announced: a peer that
    // announces 16 MiB and sends nothing costs nothing.
    buf.clear();
    let got = r.take(u64::from(len)).read_to_end(buf)?;
    if got != len as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

/// Wipes a buffer that held a secret (an encoded PIN), keeping its capacity.
pub fn wipe(buf: &mut Vec<u8>) {
    zeroize::Zeroize::zeroize(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut wire = Vec::new();
        let mut scratch = Vec::new();
        write_frame(&mut wire, b"hello", &mut scratch).unwrap();
        assert_eq!(&wire[..4], &5u32.to_le_bytes());
        let mut buf = Vec::new();
        read_frame(&mut wire.as_slice(), &mut buf, MAX_FRAME_LEN).unwrap();
        assert_eq!(buf, b"hello");
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let wire = u32::MAX.to_le_bytes();
        let mut buf = Vec::new();
        let err = read_frame(&mut wire.as_slice(), &mut buf, MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }));
        assert_eq!(buf.capacity(), 0);
    }

    #[test]
    fn truncated_frame_is_an_io_error() {
        let mut wire = 10u32.to_le_bytes().to_vec();
        wire.extend_from_slice(b"abc");
        let mut buf = Vec::new();
        let err = read_frame(&mut wire.as_slice(), &mut buf, MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(err, ProtocolError::Io(_)));
    }
}
