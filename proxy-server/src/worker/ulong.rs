//! The server's side of `CK_ULONG` on the wire ([`protocol::ulong`]): a value too wide for
//! this platform, from the application, is a bad argument.

use cryptoki_sys::*;

pub use protocol::ulong::wire;

/// A wire u64 as a CK_ULONG; all ones stays all ones (CK_UNAVAILABLE_INFORMATION).
pub fn to_ulong(v: u64) -> Result<CK_ULONG, CK_RV> {
    protocol::ulong::narrow(v).ok_or(CKR_ARGUMENTS_BAD)
}
