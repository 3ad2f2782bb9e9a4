//! Return values in log lines and metrics labels, named by [`protocol::names`].

use cryptoki_sys::CK_RV;
use protocol::names;

/// `CKR_NAME (0x..)` for a return value; vendor or unknown codes show as hex only.
pub fn name(rv: CK_RV) -> String {
    match names::rv(rv) {
        Some(n) => format!("{n} ({rv:#x})"),
        None => format!("{rv:#x}"),
    }
}

/// `CKR_NAME`, or the hex value for codes without a name (a metrics label).
pub fn label(rv: CK_RV) -> String {
    names::or_hex(names::rv(rv), rv)
}
