//! The one place for the panic boundary and raw-pointer handling of the C API.
//!
//! Every exported function runs its body inside [`entry!`]: a panic becomes
//! `CKR_GENERAL_ERROR` and never unwinds into the host application. Pointers are checked for
//! NULL before use (`CKR_ARGUMENTS_BAD`), slices are built only after that check, and every
//! length crosses widths with a checked conversion.

use std::mem::size_of;

use cryptoki_sys::*;
use protocol::message::Response;
use protocol::shape::{Bytes, Out};

/// The result type of the logic behind each C function.
pub type Rv<T = ()> = Result<T, CK_RV>;

/// Runs the body of the C function `$name` (returning [`Rv`]) and turns it into a `CK_RV`,
/// catching panics; one line of the call trace when it is on ([`crate::trace`]).
macro_rules! entry {
    ($name:expr, $body:block) => {{
        let traced = $crate::trace::begin();
        let result =
            ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| -> $crate::ffi::Rv {
                $body
            }));
        let rv = match result {
            Ok(Ok(())) => ::cryptoki_sys::CKR_OK,
            Ok(Err(rv)) => rv,
            Err(_) => ::cryptoki_sys::CKR_GENERAL_ERROR,
        };
        if let Some(started) = traced {
            $crate::trace::end($name, started, rv);
        }
        rv
    }};
}
pub(crate) use entry;

/// Size of a native `CK_ULONG`.
pub const ULONG: usize = size_of::<CK_ULONG>();
/// Size of a native `CK_ATTRIBUTE`.
pub const ATTRIBUTE: usize = size_of::<CK_ATTRIBUTE>();

pub use protocol::ulong::wire;

/// A wire `u64` as a native `CK_ULONG` ([`protocol::ulong::narrow`]); all ones stays all ones
/// (CK_UNAVAILABLE_INFORMATION), anything else too wide for this platform is an error from a
/// bad peer.
pub fn narrow(v: u64) -> Rv<CK_ULONG> {
    protocol::ulong::narrow(v).ok_or(CKR_GENERAL_ERROR)
}

/// A native length as `usize`.
pub fn len(v: CK_ULONG) -> Rv<usize> {
    usize::try_from(v).map_err(|_| CKR_ARGUMENTS_BAD)
}

/// The caller's input bytes in their shape (DESIGN.md, "The vendor decides"): NULL travels as
/// NULL with the caller's length, unread, so the vendor decides what NULL means; a pointer is
/// read for its length, bounded first by what one frame carries.
///
/// # Safety
/// `p` must point to `n` readable bytes when not NULL.
pub unsafe fn input(p: *const u8, n: CK_ULONG) -> Rv<Bytes> {
    if p.is_null() {
        return Ok(Bytes::Null(wire(n)));
    }
    Ok(Bytes::Given(bytes(p, n)?.to_vec()))
}

/// The caller's bytes where the function needs them (a PIN, a label): NULL is allowed only
/// with a zero length.
///
/// # Safety
/// `p` must point to `n` readable bytes when not NULL.
pub unsafe fn bytes<'a>(p: *const u8, n: CK_ULONG) -> Rv<&'a [u8]> {
    let n = carried(n)?;
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    Ok(std::slice::from_raw_parts(p, n))
}

/// A length of caller bytes to send, bounded by what one frame carries, checked before any
/// slice is made or byte copied: a length no frame can carry (2^46 over a small buffer, a
/// pointer read as a length) cannot be forwarded, and answers CKR_ARGUMENTS_BAD instead of
/// an allocation that would abort the calling process (DESIGN.md, "The vendor decides").
pub fn carried(n: CK_ULONG) -> Rv<usize> {
    let n = len(n)?;
    if n as u64 > protocol::frame::MAX_DATA_LEN {
        crate::log::warn(&format!(
            "a length of {n} bytes: more than one frame carries; CKR_ARGUMENTS_BAD"
        ));
        return Err(CKR_ARGUMENTS_BAD);
    }
    Ok(n)
}

/// An optional PIN: NULL is a protected-authentication-path login.
///
/// # Safety
/// As [`bytes`].
pub unsafe fn pin(p: *const u8, n: CK_ULONG) -> Rv<protocol::message::Pin> {
    if p.is_null() {
        return Ok(None);
    }
    Ok(Some(bytes(p, n)?.to_vec().into()))
}

/// A required output pointer of a function the shim answers itself (C_GetFunctionList,
/// C_GetInterface...): NULL is CKR_ARGUMENTS_BAD, as in any library.
///
/// # Safety
/// `p` must be NULL or valid for writes of a `T`.
pub unsafe fn out<'a, T>(p: *mut T) -> Rv<&'a mut T> {
    p.as_mut().ok_or(CKR_ARGUMENTS_BAD)
}

/// Writes what the answer `$response` carries in its `$variant`, bound to `$v` and converted
/// by `$value`, into the caller's `$out` (when not NULL, [`put`]); any other answer is the
/// call's error ([`unexpected`]).
macro_rules! write_answer {
    ($response:expr, $variant:path, $out:expr, |$v:ident| $value:expr) => {
        match $response {
            $variant($v) => {
                $crate::ffi::put($out, $value);
                Ok(())
            }
            other => Err($crate::ffi::unexpected(other)),
        }
    };
}
pub(crate) use write_answer;

/// Writes `value` through the caller's output pointer when it is not NULL.
///
/// # Safety
/// `p` must be NULL or valid for writes of a `T`.
pub unsafe fn put<T>(p: *mut T, value: T) {
    if let Some(p) = p.as_mut() {
        *p = value;
    }
}

/// The caller's output buffer of the two-call convention (PKCS#11 v2.40 §5.2): a NULL buffer
/// asks for the length; a buffer too small gets `CKR_BUFFER_TOO_SMALL` and the length. A NULL
/// length pointer travels as NULL, for the vendor to answer.
pub struct OutBuf<'a, T> {
    buf: *mut T,
    len: Option<&'a mut CK_ULONG>,
}

impl<T: Copy> OutBuf<'_, T> {
    /// # Safety
    /// `len` must be NULL or writable; `buf` NULL or writable for `*len` elements.
    pub unsafe fn new(buf: *mut T, len: *mut CK_ULONG) -> Rv<Self> {
        Ok(Self {
            buf,
            len: len.as_mut(),
        })
    }

    /// What the request says of the caller's output: a buffer or NULL, and the value at the
    /// length pointer (the vendor starts from it, and may leave it unchanged).
    pub fn capacity(&self) -> Out {
        Out {
            buffer: !self.buf.is_null(),
            len: self.len.as_deref().map(|n| wire(*n)),
            complete: false,
        }
    }

    /// Writes what the server answered: the reported length always (as the vendor library
    /// did), the data when the call succeeded with a buffer. Data longer than the caller's
    /// buffer (a hostile or broken server) is refused without writing.
    pub fn write(self, rv: u64, reported: u64, data: &[T]) -> Rv {
        let rv = narrow(rv)?;
        let Some(out_len) = self.len else {
            // No length pointer: the vendor had nothing to write either.
            return if rv == CKR_OK { Ok(()) } else { Err(rv) };
        };
        if !self.buf.is_null() && rv == CKR_OK {
            if data.len() > len(*out_len)? {
                return Err(CKR_GENERAL_ERROR);
            }
            // SAFETY: buf holds *len elements (checked above), data is a distinct Rust slice.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf, data.len()) };
        }
        *out_len = narrow(reported)?;
        if rv == CKR_OK {
            Ok(())
        } else {
            Err(rv)
        }
    }
}

impl OutBuf<'_, u8> {
    /// Writes a [`Response::Output`].
    pub fn write_output(self, r: Response) -> Rv {
        match r {
            Response::Output { rv, len, data } => self.write(rv, len, &data),
            other => Err(unexpected(other)),
        }
    }
}

impl OutBuf<'_, CK_ULONG> {
    /// Writes a [`Response::Ulongs`] (slot and mechanism lists).
    pub fn write_ulongs(self, r: Response) -> Rv {
        match r {
            Response::Ulongs { rv, count, values } => {
                let native = values.into_iter().map(narrow).collect::<Rv<Vec<_>>>()?;
                self.write(rv, count, &native)
            }
            other => Err(unexpected(other)),
        }
    }
}

/// The return value for a response of the wrong shape: the server's error, or a protocol
/// violation (`CKR_GENERAL_ERROR`).
pub fn unexpected(r: Response) -> CK_RV {
    match r {
        Response::Rv(rv) if rv != 0 => narrow(rv).unwrap_or(CKR_GENERAL_ERROR),
        _ => CKR_GENERAL_ERROR,
    }
}

/// Copies `src` into a fixed-size, blank-padded text field of a PKCS#11 info structure.
pub fn padded<const N: usize>(src: &[u8]) -> [u8; N] {
    let mut out = [b' '; N];
    let n = src.len().min(N);
    out[..n].copy_from_slice(&src[..n]);
    out
}

/// Answers `Response::Rv` as a result.
pub fn rv_of(r: Response) -> Rv {
    match r {
        Response::Rv(0) => Ok(()),
        other => Err(unexpected(other)),
    }
}
