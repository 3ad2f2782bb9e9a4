//! Builds vendor-side `CK_ATTRIBUTE` arrays from wire attributes and reads results back
//! (PKCS#11 v2.40 §5.7 C_GetAttributeValue; nested templates: v2.40 §4.1.5 / v3.0 §4.1.3).
//!
//! A [`CTemplate`] owns every buffer its attributes point to, so its pointers stay valid for as
//! long as it lives; buffers of `CK_ULONG`s are `CK_ULONG` vectors so they are aligned.

use std::ffi::c_void;
use std::mem::size_of;
use std::ptr;

use cryptoki_sys::*;
use protocol::attribute::{
    bytes_to_units, kind_of, units_to_bytes, AttrOut, AttrQuery, AttrValue, Attribute, Kind, Want,
    MAX_TEMPLATE_DEPTH,
};
use protocol::frame::MAX_DATA_LEN;
use protocol::shape::Array;

use super::ulong::{to_ulong, wire};

const ULONG: usize = size_of::<CK_ULONG>();
const ATTRIBUTE: usize = size_of::<CK_ATTRIBUTE>();

/// Storage behind one attribute's `pValue`.
enum Storage {
    None,
    /// The caller's NULL `pValue`, with its length.
    Null(CK_ULONG),
    Bytes(Vec<u8>),
    Ulongs(Vec<CK_ULONG>),
    Nested(CTemplate),
}

/// A C template with the storage its pointers refer to, in the caller's shape: a NULL
/// template is NULL with the caller's count, an empty one a valid pointer with a count of 0
/// (DESIGN.md, "The vendor decides").
pub struct CTemplate {
    attrs: Vec<CK_ATTRIBUTE>,
    storage: Vec<Storage>,
    /// The caller's count of a NULL template.
    null: Option<CK_ULONG>,
}

impl CTemplate {
    /// A template for an input call (C_CreateObject, C_FindObjectsInit, key generation...).
    pub fn from_wire(template: &Array<Attribute>) -> Result<Self, CK_RV> {
        match template {
            Array::Null(n) => Ok(Self::null(*n)?),
            Array::Given(t) => Self::from_wire_at(t, 0),
        }
    }

    fn null(count: u64) -> Result<Self, CK_RV> {
        Ok(Self {
            null: Some(to_ulong(count)?),
            ..Self::with_capacity(0)
        })
    }

    fn from_wire_at(template: &[Attribute], depth: usize) -> Result<Self, CK_RV> {
        if depth > MAX_TEMPLATE_DEPTH {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        let mut t = Self::with_capacity(template.len());
        for a in template {
            let storage = match &a.value {
                AttrValue::Null(n) => Storage::Null(to_ulong(*n)?),
                AttrValue::Bool(b) => Storage::Bytes(vec![u8::from(*b)]),
                AttrValue::Ulong(v) => Storage::Ulongs(vec![to_ulong(*v)?]),
                AttrValue::Date(d) => Storage::Bytes(d.to_vec()),
                AttrValue::UlongArray(v) => {
                    Storage::Ulongs(v.iter().map(|x| to_ulong(*x)).collect::<Result<_, _>>()?)
                }
                AttrValue::Template(nested) => {
                    Storage::Nested(Self::from_wire_at(nested, depth + 1)?)
                }
                AttrValue::Bytes(b) => Storage::Bytes(b.clone()),
            };
            t.push(to_ulong(a.ty)?, storage)?;
        }
        Ok(t)
    }

    /// A template for C_GetAttributeValue with a buffer of the asked size per attribute.
    /// All buffers together are bounded by what one response frame can carry, so a caller
    /// announcing huge buffers cannot make the server allocate more than that.
    pub fn for_query(query: &Array<AttrQuery>) -> Result<Self, CK_RV> {
        let mut budget = MAX_DATA_LEN;
        match query {
            Array::Null(n) => Self::null(*n),
            Array::Given(q) => Self::for_query_at(q, 0, &mut budget),
        }
    }

    fn for_query_at(query: &[AttrQuery], depth: usize, budget: &mut u64) -> Result<Self, CK_RV> {
        if depth > MAX_TEMPLATE_DEPTH {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let mut t = Self::with_capacity(query.len());
        for q in query {
            let kind = kind_of(q.ty);
            let storage = match &q.want {
                Want::Len => Storage::None,
                Want::Buffer(units) => {
                    let asked = units_to_bytes(kind, *units, ULONG, ATTRIBUTE).unwrap_or(u64::MAX);
                    let granted = asked.min(*budget);
                    *budget -= granted;
                    let bytes = granted as usize;
                    match kind {
                        Kind::Ulong | Kind::UlongArray => Storage::Ulongs(vec![0; bytes / ULONG]),
                        _ => Storage::Bytes(vec![0; bytes]),
                    }
                }
                Want::Template(nested) => {
                    Storage::Nested(Self::for_query_at(nested, depth + 1, budget)?)
                }
            };
            t.push(to_ulong(q.ty)?, storage)?;
        }
        Ok(t)
    }

    fn with_capacity(n: usize) -> Self {
        Self {
            // At least one element: an empty template still has a real, valid pointer.
            attrs: Vec::with_capacity(n.max(1)),
            storage: Vec::with_capacity(n),
            null: None,
        }
    }

    fn push(&mut self, ty: CK_ATTRIBUTE_TYPE, mut storage: Storage) -> Result<(), CK_RV> {
        let (p, len): (*mut c_void, usize) = match &mut storage {
            Storage::None => (ptr::null_mut(), 0),
            Storage::Null(n) => (ptr::null_mut(), *n as usize),
            Storage::Bytes(b) if b.is_empty() => {
                // An empty value the caller gave with a pointer: a real one, never NULL.
                b.reserve(1);
                (b.as_mut_ptr().cast(), 0)
            }
            Storage::Bytes(b) => (b.as_mut_ptr().cast(), b.len()),
            Storage::Ulongs(v) => (v.as_mut_ptr().cast(), v.len() * ULONG),
            Storage::Nested(t) => (t.attrs.as_mut_ptr().cast(), t.attrs.len() * ATTRIBUTE),
        };
        let len = CK_ULONG::try_from(len).map_err(|_| CKR_ARGUMENTS_BAD)?;
        self.attrs.push(CK_ATTRIBUTE {
            type_: ty,
            pValue: p,
            ulValueLen: len,
        });
        self.storage.push(storage);
        Ok(())
    }

    /// The template's pointer: NULL only for the caller's NULL.
    pub fn as_mut_ptr(&mut self) -> *mut CK_ATTRIBUTE {
        if self.null.is_some() {
            ptr::null_mut()
        } else {
            self.attrs.as_mut_ptr()
        }
    }

    pub fn count(&self) -> CK_ULONG {
        self.null.unwrap_or(self.attrs.len() as CK_ULONG)
    }

    /// Reads what the vendor wrote after C_GetAttributeValue, one result per attribute.
    /// A length the vendor reports beyond the buffer it was given is treated as unavailable.
    pub fn results(&self) -> Vec<AttrOut> {
        self.attrs
            .iter()
            .zip(&self.storage)
            .map(|(a, s)| {
                if a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
                    return AttrOut::Unavailable;
                }
                let kind = kind_of(wire(a.type_));
                let len = wire(a.ulValueLen);
                match s {
                    Storage::None | Storage::Null(_) => {
                        AttrOut::Len(bytes_to_units(kind, len, ULONG, ATTRIBUTE))
                    }
                    Storage::Bytes(b) => {
                        match usize::try_from(len).ok().filter(|l| *l <= b.len()) {
                            Some(l) => AttrOut::Value(value_from_bytes(kind, &b[..l])),
                            None => AttrOut::Unavailable,
                        }
                    }
                    Storage::Ulongs(v) => {
                        match usize::try_from(len).ok().filter(|l| *l <= v.len() * ULONG) {
                            Some(l) if l % ULONG == 0 => {
                                let vals = v[..l / ULONG].iter().map(|x| wire(*x));
                                AttrOut::Value(match kind {
                                    Kind::Ulong if l == ULONG => AttrValue::Ulong(wire(v[0])),
                                    _ => AttrValue::UlongArray(vals.collect()),
                                })
                            }
                            Some(l) => AttrOut::Value(AttrValue::Bytes(
                                v.iter().flat_map(|x| x.to_ne_bytes()).take(l).collect(),
                            )),
                            None => AttrOut::Unavailable,
                        }
                    }
                    Storage::Nested(t) => {
                        let n = (len as usize) / ATTRIBUTE;
                        let mut nested = t.results();
                        nested.truncate(n);
                        AttrOut::Template(nested.into())
                    }
                }
            })
            .collect()
    }
}

/// Types a value the vendor returned as bytes; a length that does not fit the kind stays bytes.
fn value_from_bytes(kind: Kind, b: &[u8]) -> AttrValue {
    match kind {
        Kind::Bool if b.len() == 1 && b[0] <= 1 => AttrValue::Bool(b[0] == 1),
        Kind::Date if b.len() == 8 => {
            let mut d = [0u8; 8];
            d.copy_from_slice(b);
            AttrValue::Date(d)
        }
        _ => AttrValue::Bytes(b.to_vec()),
    }
}
