//! Caller templates to wire attributes and back (PKCS#11 v2.40 §4.1 attribute templates,
//! §5.7 C_GetAttributeValue).

use cryptoki_sys::*;
use protocol::attribute::{
    kind_of, units_to_bytes, AttrOut, AttrQuery, AttrValue, Attribute, Kind, Want,
    MAX_TEMPLATE_DEPTH, MAX_TEMPLATE_LEN,
};

use protocol::shape::Array;

use crate::ffi::{bytes, len, narrow, wire, Rv, ATTRIBUTE, ULONG};

/// The caller's `CK_ATTRIBUTE` array, checked: NULL only with a zero count.
///
/// # Safety
/// `p` must point to `count` attributes when not NULL.
unsafe fn attributes<'a>(p: *const CK_ATTRIBUTE, count: CK_ULONG) -> Rv<&'a [CK_ATTRIBUTE]> {
    let n = len(count)?;
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() || n > MAX_TEMPLATE_LEN {
        return Err(CKR_ARGUMENTS_BAD);
    }
    Ok(std::slice::from_raw_parts(p, n))
}

/// Reads an input template (C_CreateObject, C_FindObjectsInit, key generation...) in its
/// shape: a NULL template travels as NULL with the caller's count, unread, and a non-NULL one
/// with a count of 0 stays non-NULL (DESIGN.md, "The vendor decides").
///
/// # Safety
/// `p` must point to `count` attributes whose values are readable for their lengths.
pub unsafe fn read(p: *const CK_ATTRIBUTE, count: CK_ULONG) -> Rv<Array<Attribute>> {
    shaped(p, count, |p, count| read_at(p, count, 0))
}

/// A caller's template in its shape: NULL travels as NULL with the caller's count, unread;
/// anything else is `read`.
unsafe fn shaped<T>(
    p: *const CK_ATTRIBUTE,
    count: CK_ULONG,
    read: impl FnOnce(*const CK_ATTRIBUTE, CK_ULONG) -> Rv<Vec<T>>,
) -> Rv<Array<T>> {
    if p.is_null() {
        return Ok(Array::Null(wire(count)));
    }
    Ok(Array::Given(read(p, count)?))
}

/// Each attribute of the caller's template `p` at nesting `depth` (at most
/// [`MAX_TEMPLATE_DEPTH`]), with its type, as `each` reads it.
unsafe fn each_attribute<T>(
    p: *const CK_ATTRIBUTE,
    count: CK_ULONG,
    depth: usize,
    mut each: impl FnMut(&CK_ATTRIBUTE, u64) -> Rv<T>,
) -> Rv<Vec<T>> {
    if depth > MAX_TEMPLATE_DEPTH {
        return Err(CKR_ARGUMENTS_BAD);
    }
    let attributes = attributes(p, count)?;
    attributes.iter().map(|a| each(a, wire(a.type_))).collect()
}

unsafe fn read_at(p: *const CK_ATTRIBUTE, count: CK_ULONG, depth: usize) -> Rv<Vec<Attribute>> {
    each_attribute(p, count, depth, |a, ty| {
        if a.pValue.is_null() {
            // Nothing to read: the shape travels, and the vendor answers it.
            return Ok(Attribute {
                ty,
                value: AttrValue::Null(wire(a.ulValueLen)),
            });
        }
        let raw = bytes(a.pValue as *const u8, a.ulValueLen)?;
        let value = match kind_of(ty) {
            Kind::Bool if raw.len() == 1 && raw[0] <= 1 => AttrValue::Bool(raw[0] == 1),
            Kind::Ulong if raw.len() == ULONG => {
                AttrValue::Ulong(wire((a.pValue as *const CK_ULONG).read_unaligned()))
            }
            Kind::Date if raw.len() == 8 => {
                AttrValue::Date(raw.try_into().map_err(|_| CKR_GENERAL_ERROR)?)
            }
            Kind::UlongArray if raw.len() % ULONG == 0 => AttrValue::UlongArray(
                (0..raw.len() / ULONG)
                    .map(|i| wire((a.pValue as *const CK_ULONG).add(i).read_unaligned()))
                    .collect(),
            ),
            Kind::Template if raw.len() % ATTRIBUTE == 0 => AttrValue::Template(
                read_at(
                    a.pValue as *const CK_ATTRIBUTE,
                    (raw.len() / ATTRIBUTE) as CK_ULONG,
                    depth + 1,
                )?
                .into(),
            ),
            _ => AttrValue::Bytes(raw.to_vec()),
        };
        Ok(Attribute { ty, value })
    })
}

/// Reads the caller's C_GetAttributeValue template as a query: a NULL `pValue` asks for the
/// length, a buffer gives its capacity, a template attribute's buffer is a nested query.
///
/// A NULL template travels as NULL, as in [`read`].
///
/// # Safety
/// As [`read`].
pub unsafe fn query(p: *const CK_ATTRIBUTE, count: CK_ULONG) -> Rv<Array<AttrQuery>> {
    shaped(p, count, |p, count| query_at(p, count, 0))
}

unsafe fn query_at(p: *const CK_ATTRIBUTE, count: CK_ULONG, depth: usize) -> Rv<Vec<AttrQuery>> {
    each_attribute(p, count, depth, |a, ty| {
        let kind = kind_of(ty);
        let want = if a.pValue.is_null() {
            Want::Len
        } else if kind == Kind::Template && (a.ulValueLen as usize).is_multiple_of(ATTRIBUTE) {
            Want::Template(
                query_at(
                    a.pValue as *const CK_ATTRIBUTE,
                    a.ulValueLen / ATTRIBUTE as CK_ULONG,
                    depth + 1,
                )?
                .into(),
            )
        } else {
            // Whole elements only: a 7-byte buffer holds no CK_ULONG.
            let unit = kind.unit(ULONG, ATTRIBUTE) as u64;
            Want::Buffer(wire(a.ulValueLen) / unit)
        };
        Ok(AttrQuery { ty, want })
    })
}

/// Writes C_GetAttributeValue results into the caller's template and returns the call's
/// return value: the server's, or `CKR_BUFFER_TOO_SMALL` if a value does not fit a buffer
/// here (only possible between machines of different widths, or with a bad server).
///
/// # Safety
/// As [`query`]; `p` must also be writable.
pub unsafe fn write_results(
    p: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    results: &[AttrOut],
    rv: CK_RV,
) -> Rv<CK_RV> {
    if p.is_null() {
        // The vendor had no template to write into.
        return if results.is_empty() {
            Ok(rv)
        } else {
            Err(CKR_GENERAL_ERROR)
        };
    }
    let attrs = attributes(p, count)?;
    if results.len() != attrs.len() {
        return Err(CKR_GENERAL_ERROR);
    }
    let mut rv = rv;
    for (i, result) in results.iter().enumerate() {
        let a = &mut *p.add(i);
        if !write_one(a, result)? && rv == CKR_OK {
            rv = CKR_BUFFER_TOO_SMALL;
        }
    }
    Ok(rv)
}

/// Writes one result; false if the value did not fit the caller's buffer.
unsafe fn write_one(a: &mut CK_ATTRIBUTE, result: &AttrOut) -> Rv<bool> {
    let kind = kind_of(wire(a.type_));
    match result {
        AttrOut::Unavailable => a.ulValueLen = CK_UNAVAILABLE_INFORMATION,
        AttrOut::Len(units) => {
            let bytes = units_to_bytes(kind, *units, ULONG, ATTRIBUTE).ok_or(CKR_GENERAL_ERROR)?;
            a.ulValueLen = narrow(bytes)?;
        }
        AttrOut::Value(v) => {
            let native = native_bytes(v)?;
            if a.pValue.is_null() || native.len() > len(a.ulValueLen)? {
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                return Ok(false);
            }
            std::ptr::copy_nonoverlapping(native.as_ptr(), a.pValue as *mut u8, native.len());
            a.ulValueLen = native.len() as CK_ULONG;
        }
        AttrOut::Template(nested) => {
            let capacity = len(a.ulValueLen)? / ATTRIBUTE;
            if a.pValue.is_null() || nested.len() > capacity {
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                return Ok(false);
            }
            let inner = a.pValue as *mut CK_ATTRIBUTE;
            let mut fits = true;
            for (i, r) in nested.iter().enumerate() {
                fits &= write_one(&mut *inner.add(i), r)?;
            }
            a.ulValueLen = (nested.len() * ATTRIBUTE) as CK_ULONG;
            return Ok(fits);
        }
    }
    Ok(true)
}

/// A typed value in this machine's layout.
fn native_bytes(v: &AttrValue) -> Rv<Vec<u8>> {
    Ok(match v {
        AttrValue::Bool(b) => vec![u8::from(*b)],
        AttrValue::Ulong(x) => narrow(*x)?.to_ne_bytes().to_vec(),
        AttrValue::Date(d) => d.to_vec(),
        AttrValue::UlongArray(xs) => {
            let mut out = Vec::with_capacity(xs.len() * ULONG);
            for x in xs {
                out.extend_from_slice(&narrow(*x)?.to_ne_bytes());
            }
            out
        }
        AttrValue::Bytes(b) => b.clone(),
        // A nested template is answered as AttrOut::Template, never as a flat value; a NULL
        // value only travels to the vendor, never back.
        AttrValue::Template(_) | AttrValue::Null(_) => return Err(CKR_GENERAL_ERROR),
    })
}
