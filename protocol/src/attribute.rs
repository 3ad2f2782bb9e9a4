//! Typed attribute values (PKCS#11 v2.40 §4, v3.0 §4.1 "Attributes").
//!
//! A `CK_ATTRIBUTE` is a type, a pointer and a byte length whose meaning depends on the type:
//! `CK_BBOOL` (one byte), `CK_ULONG` (4 or 8 bytes, native endianness), `CK_DATE` (8 chars),
//! an array of `CK_ULONG`s (`CKA_ALLOWED_MECHANISMS`), a nested `CK_ATTRIBUTE` array
//! (`CKA_WRAP_TEMPLATE`, `CKA_UNWRAP_TEMPLATE`, `CKA_DERIVE_TEMPLATE`) or plain bytes.
//! [`kind_of`] is the one table of those types; values travel as [`AttrValue`].
//!
//! Lengths and capacities travel in *units* ([`Kind::unit`]): elements for `CK_ULONG`s, ulong
//! arrays and nested templates, bytes otherwise, so each side multiplies by its own
//! `sizeof(CK_ULONG)` / `sizeof(CK_ATTRIBUTE)`.

use std::cell::Cell;
use std::ops::Deref;

use crate::shape::Array;
use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};

/// `CKF_ARRAY_ATTRIBUTE`.
pub const ARRAY_ATTRIBUTE: u64 = 0x4000_0000;
/// `CKA_VENDOR_DEFINED`: types from here on have no known layout and travel as bytes.
pub const VENDOR_DEFINED: u64 = 0x8000_0000;
/// `CKA_WRAP_TEMPLATE`.
pub const WRAP_TEMPLATE: u64 = ARRAY_ATTRIBUTE | 0x211;
/// `CKA_UNWRAP_TEMPLATE`.
pub const UNWRAP_TEMPLATE: u64 = ARRAY_ATTRIBUTE | 0x212;
/// `CKA_DERIVE_TEMPLATE`.
pub const DERIVE_TEMPLATE: u64 = ARRAY_ATTRIBUTE | 0x213;
/// `CKA_ALLOWED_MECHANISMS`: an array of `CK_MECHANISM_TYPE`, not a template.
pub const ALLOWED_MECHANISMS: u64 = ARRAY_ATTRIBUTE | 0x600;

/// How deep nested templates may go (the spec allows templates inside templates; real tokens use
/// one level). Deeper input is refused.
pub const MAX_TEMPLATE_DEPTH: usize = 4;
/// Most attributes in one template.
pub const MAX_TEMPLATE_LEN: usize = 4096;

/// The C layout of an attribute's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Ulong,
    Date,
    UlongArray,
    Template,
    Bytes,
}

impl Kind {
    /// Whether lengths of this kind count elements (true) or bytes (false) on the wire.
    pub fn counts_elements(self) -> bool {
        matches!(self, Kind::Ulong | Kind::UlongArray | Kind::Template)
    }

    /// Size of one length unit of this kind on a machine with the given C sizes.
    pub fn unit(self, ulong_size: usize, attribute_size: usize) -> usize {
        match self {
            Kind::Ulong | Kind::UlongArray => ulong_size,
            Kind::Template => attribute_size,
            Kind::Bool | Kind::Date | Kind::Bytes => 1,
        }
    }
}

/// The layout of attribute `ty` (PKCS#11 v3.0 §4 tables of object attributes).
pub fn kind_of(ty: u64) -> Kind {
    match ty {
        // CK_BBOOL attributes.
        0x001
        | 0x002
        | 0x086
        | 0x103..=0x10C
        | 0x162..=0x165
        | 0x170..=0x172
        | 0x200
        | 0x202
        | 0x210
        | 0x223
        | 0x301
        | 0x302
        | 0x405 => Kind::Bool,
        // CK_ULONG attributes (CKA_CLASS, CKA_CERTIFICATE_TYPE, CKA_CERTIFICATE_CATEGORY,
        // CKA_JAVA_MIDP_SECURITY_DOMAIN, CKA_NAME_HASH_ALGORITHM, CKA_KEY_TYPE,
        // CKA_MODULUS_BITS, CKA_PRIME_BITS, CKA_SUBPRIME_BITS, CKA_VALUE_BITS, CKA_VALUE_LEN,
        // CKA_KEY_GEN_MECHANISM, CKA_AUTH_PIN_FLAGS, CKA_OTP_*, CKA_HW_FEATURE_TYPE,
        // CKA_PIXEL_X.., CKA_MECHANISM_TYPE, CKA_PROFILE_ID).
        0x000
        | 0x080
        | 0x087
        | 0x088
        | 0x08C
        | 0x100
        | 0x121
        | 0x133
        | 0x134
        | 0x160
        | 0x161
        | 0x166
        | 0x201
        | 0x220
        | 0x221
        | 0x222
        | 0x224..=0x227
        | 0x300
        | 0x400..=0x404
        | 0x406
        | 0x500
        | 0x601 => Kind::Ulong,
        0x110 | 0x111 => Kind::Date,
        ALLOWED_MECHANISMS => Kind::UlongArray,
        WRAP_TEMPLATE | UNWRAP_TEMPLATE | DERIVE_TEMPLATE => Kind::Template,
        _ => Kind::Bytes,
    }
}

/// The attributes of a nested template (`CKA_WRAP_TEMPLATE`...). Decoding counts the
/// nesting depth and refuses more than [`MAX_TEMPLATE_DEPTH`] levels, so a hostile frame of
/// templates nested a million deep is an error, not a stack overflow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nested<T>(pub Vec<T>);

impl<T> Deref for Nested<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T> From<Vec<T>> for Nested<T> {
    fn from(v: Vec<T>) -> Self {
        Self(v)
    }
}

impl<T: Serialize> Serialize for Nested<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

thread_local! {
    static DECODE_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// One level of template nesting while decoding; released on drop, errors included.
struct DepthGuard;

impl DepthGuard {
    fn enter() -> Option<Self> {
        DECODE_DEPTH.with(|d| {
            if d.get() >= MAX_TEMPLATE_DEPTH {
                None
            } else {
                d.set(d.get() + 1);
                Some(DepthGuard)
            }
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DECODE_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Nested<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _level =
            DepthGuard::enter().ok_or_else(|| D::Error::custom("templates nested too deeply"))?;
        Vec::<T>::deserialize(d).map(Nested)
    }
}

/// An attribute value as it travels. A value whose length does not fit its kind (a `CK_ULONG`
/// attribute given 3 bytes, say) travels as `Bytes`, unchanged, so the vendor library judges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrValue {
    Bool(bool),
    Ulong(u64),
    Date([u8; 8]),
    UlongArray(Vec<u64>),
    Template(Nested<Attribute>),
    Bytes(Vec<u8>),
    /// A NULL `pValue` with this `ulValueLen` (the vendor answers it; 0 is an empty value
    /// given as NULL).
    Null(u64),
}

/// One `CK_ATTRIBUTE` of an input template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    pub ty: u64,
    pub value: AttrValue,
}

/// What the caller of `C_GetAttributeValue` asks for one attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrQuery {
    pub ty: u64,
    pub want: Want,
}

/// The caller's buffer for one attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Want {
    /// `pValue == NULL`: the length only.
    Len,
    /// A buffer of this many units.
    Buffer(u64),
    /// A nested `CK_ATTRIBUTE` array (template attributes), each entry asked for in turn.
    Template(Nested<AttrQuery>),
}

/// What the vendor library answered for one attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrOut {
    /// `ulValueLen == CK_UNAVAILABLE_INFORMATION`.
    Unavailable,
    /// The length, in units, for a length query.
    Len(u64),
    /// The value.
    Value(AttrValue),
    /// A nested template answered entry by entry.
    Template(Nested<AttrOut>),
}

/// Converts a byte length of `kind` into wire units; lengths that are not a whole number of
/// elements round up so the receiver never under-allocates.
pub fn bytes_to_units(kind: Kind, bytes: u64, ulong_size: usize, attribute_size: usize) -> u64 {
    let unit = kind.unit(ulong_size, attribute_size) as u64;
    bytes.div_ceil(unit)
}

/// Converts wire units of `kind` into a byte length; `None` on overflow.
pub fn units_to_bytes(
    kind: Kind,
    units: u64,
    ulong_size: usize,
    attribute_size: usize,
) -> Option<u64> {
    units.checked_mul(kind.unit(ulong_size, attribute_size) as u64)
}

/// Whether a C_GetAttributeValue query is a size query the server may complete (DESIGN.md,
/// "Two-call functions"): every attribute asked for its length only, none a nested template
/// (whose follow-up asks the lengths of its entries: a third call).
pub fn completable(query: &Array<AttrQuery>) -> bool {
    match query {
        Array::Given(q) => {
            !q.is_empty()
                && q.iter()
                    .all(|a| a.want == Want::Len && kind_of(a.ty) != Kind::Template)
        }
        Array::Null(_) => false,
    }
}

/// The real call after a completable size query the vendor answered CKR_OK with `lengths`:
/// each attribute with a buffer of its length. `None` when an answer is not a length.
pub fn follow_up(query: &[AttrQuery], lengths: &[AttrOut]) -> Option<Vec<AttrQuery>> {
    if query.len() != lengths.len() {
        return None;
    }
    query
        .iter()
        .zip(lengths)
        .map(|(a, l)| match l {
            AttrOut::Len(units) => Some(AttrQuery {
                ty: a.ty,
                want: Want::Buffer(*units),
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// A one-attribute template nested `depth` levels deep, as postcard bytes written by hand:
    /// (ty = 0, AttrValue::Template = variant 4, one element) per level, then a CK_BBOOL.
    fn nested_bytes(depth: usize) -> Vec<u8> {
        let mut bytes = vec![1u8];
        for _ in 0..depth {
            bytes.extend_from_slice(&[0, 4, 1]);
        }
        bytes.extend_from_slice(&[1, 0, 1]); // CKA_TOKEN = Bool(true)
        bytes
    }

    #[test]
    fn nesting_is_bounded_while_decoding() {
        assert!(codec::decode::<Vec<Attribute>>(&nested_bytes(MAX_TEMPLATE_DEPTH)).is_ok());
        assert!(codec::decode::<Vec<Attribute>>(&nested_bytes(MAX_TEMPLATE_DEPTH + 1)).is_err());
        // A hundred thousand levels: an error, not a stack overflow.
        assert!(codec::decode::<Vec<Attribute>>(&nested_bytes(100_000)).is_err());
        // The depth counter was released after the errors: a legal value still decodes, and
        // encoding agrees with the hand-written bytes.
        let mut value = AttrValue::Bool(true);
        for _ in 0..MAX_TEMPLATE_DEPTH {
            value = AttrValue::Template(vec![Attribute { ty: 0, value }].into());
        }
        let mut buf = Vec::new();
        codec::encode(
            &vec![Attribute {
                ty: 0,
                value: value.clone(),
            }],
            &mut buf,
        )
        .unwrap();
        assert_eq!(
            codec::decode::<Vec<Attribute>>(&buf).unwrap()[0].value,
            value
        );
    }

    #[test]
    fn kinds_of_well_known_attributes() {
        assert_eq!(kind_of(0x000), Kind::Ulong); // CKA_CLASS
        assert_eq!(kind_of(0x001), Kind::Bool); // CKA_TOKEN
        assert_eq!(kind_of(0x100), Kind::Ulong); // CKA_KEY_TYPE
        assert_eq!(kind_of(0x108), Kind::Bool); // CKA_SIGN
        assert_eq!(kind_of(0x161), Kind::Ulong); // CKA_VALUE_LEN
        assert_eq!(kind_of(0x011), Kind::Bytes); // CKA_VALUE
        assert_eq!(kind_of(0x110), Kind::Date); // CKA_START_DATE
        assert_eq!(kind_of(0x180), Kind::Bytes); // CKA_EC_PARAMS
        assert_eq!(kind_of(WRAP_TEMPLATE), Kind::Template);
        assert_eq!(kind_of(ALLOWED_MECHANISMS), Kind::UlongArray);
        assert_eq!(kind_of(VENDOR_DEFINED | 0x1), Kind::Bytes);
    }

    #[test]
    fn units_follow_each_sides_width() {
        // A CK_ULONG read on an LP64 machine is one unit, 4 bytes on ILP32.
        let units = bytes_to_units(Kind::Ulong, 8, 8, 24);
        assert_eq!(units, 1);
        assert_eq!(units_to_bytes(Kind::Ulong, units, 4, 12), Some(4));
        assert_eq!(bytes_to_units(Kind::Template, 48, 8, 24), 2);
        assert_eq!(bytes_to_units(Kind::Bytes, 65, 8, 24), 65);
        assert_eq!(units_to_bytes(Kind::UlongArray, u64::MAX, 8, 24), None);
    }
}
