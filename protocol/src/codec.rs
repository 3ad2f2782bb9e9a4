//! The one place that names the serialisation format: serde + postcard.
//!
//! postcard replaces bincode (unmaintained, RUSTSEC-2025-0141): compact varint encoding, no
//! `unsafe`, maintained, and strict about trailing or malformed input.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ProtocolError;

/// Encodes `value` into `out` (cleared first, capacity kept).
pub fn encode<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    out.clear();
    let taken = std::mem::take(out);
    *out = postcard::to_extend(value, taken).map_err(|e| ProtocolError::Codec(e.to_string()))?;
    Ok(())
}

/// Decodes one `T` that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| ProtocolError::Codec(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Codec(format!(
            "{} trailing bytes after message",
            rest.len()
        )));
    }
    Ok(value)
}
