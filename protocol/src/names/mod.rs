//! Names of PKCS#11 numbers, for people: log lines, call traces, metrics labels. Both sides
//! name return values, mechanisms and attributes the same way, from one table each, with
//! the values cryptoki-sys gives (PKCS#11 v3.0 headers); a number without a name (a vendor's
//! own, or a newer one) shows as hex.

/// `[(NAME as u64, "NAME"), ...]` from the names alone, so that each is written once; the cast
/// widens a 32-bit `CK_ULONG`. Defined before the tables' modules, which see it in scope.
macro_rules! table {
    ($($name:ident),* $(,)?) => {
        &[$(
            #[allow(clippy::unnecessary_cast)]
            ($name as u64, stringify!($name)),
        )*]
    };
}

mod attribute;
mod mechanism;
mod rv;

fn find(table: &[(u64, &'static str)], value: u64) -> Option<&'static str> {
    table
        .binary_search_by_key(&value, |&(v, _)| v)
        .ok()
        .map(|i| table[i].1)
}

/// `CKR_...` for a return value the specification defines.
pub fn rv(value: u64) -> Option<&'static str> {
    find(rv::NAMES, value)
}

/// `CKM_...` for a mechanism type the specification defines.
pub fn mechanism(value: u64) -> Option<&'static str> {
    find(mechanism::NAMES, value)
}

/// `CKA_...` for an attribute type the specification defines.
pub fn attribute(value: u64) -> Option<&'static str> {
    find(attribute::NAMES, value)
}

/// The value of the mechanism named `name` (`CKM_ECDSA`), for configuration files.
pub fn mechanism_value(name: &str) -> Option<u64> {
    mechanism::NAMES
        .iter()
        .find(|&&(_, n)| n == name)
        .map(|&(v, _)| v)
}

/// The name, or the value in hex: a label that is always one word.
pub fn or_hex(name: Option<&'static str>, value: u64) -> String {
    match name {
        Some(n) => n.to_string(),
        None => format!("{value:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_in_value_order_without_repeats() {
        for table in [rv::NAMES, mechanism::NAMES, attribute::NAMES] {
            assert!(table.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }

    #[test]
    fn numbers_are_named_as_the_specification_names_them() {
        assert_eq!(rv(0), Some("CKR_OK"));
        assert_eq!(rv(0x30), Some("CKR_DEVICE_ERROR"));
        assert_eq!(rv(0x150), Some("CKR_BUFFER_TOO_SMALL"));
        assert_eq!(mechanism(0x1041), Some("CKM_ECDSA"));
        // Two names share 0x1040: the current one.
        assert_eq!(mechanism(0x1040), Some("CKM_EC_KEY_PAIR_GEN"));
        assert_eq!(attribute(0x102), Some("CKA_ID"));
        assert_eq!(attribute(0x180), Some("CKA_EC_PARAMS"));
        assert_eq!(mechanism_value("CKM_ECDSA"), Some(0x1041));
        assert_eq!(mechanism_value("CKM_NOPE"), None);
        assert_eq!(rv(0x8000_0001), None);
        assert_eq!(or_hex(rv(0x8000_0001), 0x8000_0001), "0x80000001");
    }
}
