//! The caller's buffers as the vendor gets them (v2.40 §5.2, two-call functions; DESIGN.md,
//! "The vendor decides"): NULL pointers and lengths kept, outputs bounded by what one frame
//! carries, a size query completed by the real call when the shim asked.

use std::ptr;

use cryptoki_sys::*;
use protocol::frame::MAX_DATA_LEN;
use protocol::shape::{Array, Bytes, Out};

use crate::worker::ulong::{to_ulong, wire};

/// Output of a size-query call: return value, reported length, and the bytes written.
pub struct Output {
    pub rv: CK_RV,
    pub len: CK_ULONG,
    pub data: Vec<u8>,
    /// A completed size query ([`Out::complete`]): the real call's return value, length and
    /// bytes.
    pub completed: Option<(CK_RV, CK_ULONG, Vec<u8>)>,
}

impl Output {
    /// An answer with a return value only.
    pub fn rv(rv: CK_RV) -> Self {
        Self {
            rv,
            len: 0,
            data: Vec::new(),
            completed: None,
        }
    }
}

/// A PIN as pointer and length; `None` if its length does not fit a CK_ULONG.
pub fn opt_bytes(b: Option<&[u8]>) -> Option<(*mut u8, CK_ULONG)> {
    match b {
        None => Some((ptr::null_mut(), 0)),
        Some(b) => Some((b.as_ptr() as *mut u8, CK_ULONG::try_from(b.len()).ok()?)),
    }
}

/// What an empty input's pointer is: valid and non-NULL, as the caller's was.
static EMPTY_INPUT: [u8; 1] = [0];

/// Caller bytes as the vendor gets them: NULL stays NULL with the caller's count; an empty
/// array is a valid pointer with a count of 0 (DESIGN.md, "The vendor decides").
pub fn raw(b: &Bytes) -> Result<(*mut u8, CK_ULONG), CK_RV> {
    match b {
        Array::Null(n) => Ok((ptr::null_mut(), to_ulong(*n)?)),
        Array::Given(v) if v.is_empty() => Ok((EMPTY_INPUT.as_ptr() as *mut u8, 0)),
        Array::Given(v) => Ok((
            v.as_ptr() as *mut u8,
            CK_ULONG::try_from(v.len()).map_err(|_| CKR_ARGUMENTS_BAD)?,
        )),
    }
}

/// Runs a two-call function (v2.40 §5.2) with the caller's shapes: its buffer (at most `max`
/// elements, what one frame carries) or NULL, and its length pointer holding the caller's
/// value, or NULL. Returns the vendor's return value, the length it left and the elements
/// it wrote; the reported length is trusted only up to the buffer size.
fn with_out_array<T: Copy + Default>(
    out: Out,
    max: u64,
    call: impl FnOnce(*mut T, *mut CK_ULONG) -> CK_RV,
) -> (CK_RV, CK_ULONG, Vec<T>) {
    let elements = match (out.buffer, out.capacity()) {
        (true, Some(n)) => n.min(max) as usize,
        // A buffer without a length pointer: the vendor cannot know its size, and answers.
        (true, None) => 1,
        (false, _) => 0,
    };
    let mut buf = vec![T::default(); elements];
    let mut len: CK_ULONG = match out.len {
        Some(_) if out.buffer => buf.len() as CK_ULONG,
        // A size query starts from the caller's value: the vendor may leave it there.
        Some(n) => to_ulong(n).unwrap_or(CK_ULONG::MAX),
        None => 0,
    };
    let p = if out.buffer {
        buf.as_mut_ptr()
    } else {
        ptr::null_mut()
    };
    let lp = if out.len.is_some() {
        &mut len as *mut CK_ULONG
    } else {
        ptr::null_mut()
    };
    let rv = call(p, lp);
    if rv == CKR_OK && out.capacity().is_some() {
        buf.truncate(usize::try_from(len).unwrap_or(usize::MAX).min(buf.len()));
    } else {
        buf.clear();
    }
    (rv, len, buf)
}

/// [`with_out_array`] for bytes, as an [`Output`]. A size query the shim asked to complete
/// ([`Out::completes`]) is followed, once the vendor answered it CKR_OK, by the real call with
/// a buffer of the length the vendor gave, as the application's next call would be (v2.40
/// §5.2): the vendor sees the size query and then the call, in that order. A real call that
/// still finds the buffer too small leaves the operation active, as after the query alone: it
/// is not reported.
pub fn with_out_buffer(out: Out, mut call: impl FnMut(*mut u8, *mut CK_ULONG) -> CK_RV) -> Output {
    let (rv, len, data) = with_out_array(out, MAX_DATA_LEN, &mut call);
    let mut output = Output {
        rv,
        len,
        data,
        completed: None,
    };
    if out.completes() && rv == CKR_OK && wire(len) <= MAX_DATA_LEN {
        let real = with_out_array(Out::buffer(wire(len)), MAX_DATA_LEN, &mut call);
        if real.0 != CKR_BUFFER_TOO_SMALL {
            output.completed = Some(real);
        }
    }
    output
}

/// Most entries of a slot or mechanism list buffer.
const MAX_LIST_LEN: u64 = 65_536;

/// [`with_out_array`] for arrays of CK_ULONG (slot and mechanism lists).
pub fn with_ulong_buffer(
    out: Out,
    call: impl FnOnce(*mut CK_ULONG, *mut CK_ULONG) -> CK_RV,
) -> (CK_RV, CK_ULONG, Vec<CK_ULONG>) {
    with_out_array(out, MAX_LIST_LEN, call)
}
