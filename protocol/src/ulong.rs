//! A C `unsigned long` (PKCS#11's `CK_ULONG`) on the wire, the one place both sides convert
//! it: the wire carries a `u64` whatever the platform's width (DESIGN.md, "Wire protocol
//! rules"), all ones (CK_UNAVAILABLE_INFORMATION, v2.40 §5.7.5) stays all ones at every
//! width, and a value too wide for this platform is refused, never truncated.

use std::ffi::c_ulong;

/// A native `unsigned long` as a wire `u64`, lossless; all ones stays all ones.
#[allow(clippy::useless_conversion)]
pub fn wire(v: c_ulong) -> u64 {
    if v == c_ulong::MAX {
        u64::MAX
    } else {
        u64::from(v)
    }
}

/// A wire `u64` as a native `unsigned long`; all ones stays all ones. `None`: too wide for
/// this platform (each side answers that with its own return value).
pub fn narrow(v: u64) -> Option<c_ulong> {
    if v == u64::MAX {
        return Some(c_ulong::MAX);
    }
    c_ulong::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_ones_survives_and_nothing_is_truncated() {
        assert_eq!(wire(c_ulong::MAX), u64::MAX);
        assert_eq!(narrow(u64::MAX), Some(c_ulong::MAX));
        assert_eq!(narrow(wire(42)), Some(42));
        if std::mem::size_of::<c_ulong>() < 8 {
            assert_eq!(narrow(1 << 40), None);
        }
    }
}
