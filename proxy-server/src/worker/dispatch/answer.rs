//! From the vendor's C results to a [`Response`], and the C form of the arguments every
//! chapter shares (output pointers as the caller gave them, object handles).

use cryptoki_sys::*;
use protocol::message::{Request, Response};
use protocol::shape::Outputs;

use crate::worker::backend::Output;
use crate::worker::mechanism::CMsgParam;
use crate::worker::ulong::wire;

/// The vendor's pointer for the function's output `i`: `value`, or NULL where the caller
/// gave NULL (DESIGN.md, "The vendor decides").
pub fn out_ptr<T>(outputs: Outputs, i: u8, value: &mut T) -> *mut T {
    if outputs.has(i) {
        value
    } else {
        std::ptr::null_mut()
    }
}

pub fn output(o: Output) -> Response {
    match o.completed {
        Some((rv, out_len, data)) => Response::Completed {
            len: wire(o.len),
            rv: wire(rv),
            out_len: wire(out_len),
            data,
        },
        None => Response::Output {
            rv: wire(o.rv),
            len: wire(o.len),
            data: o.data,
        },
    }
}

pub fn rv(r: CK_RV) -> Result<Response, CK_RV> {
    Ok(Response::Rv(wire(r)))
}

pub fn handle(r: CK_RV, h: CK_ULONG) -> Result<Response, CK_RV> {
    if r == CKR_OK {
        Ok(Response::Handle(wire(h)))
    } else {
        Err(r)
    }
}

pub fn ok_then(r: CK_RV, response: impl FnOnce() -> Response) -> Result<Response, CK_RV> {
    if r == CKR_OK {
        Ok(response())
    } else {
        Err(r)
    }
}

pub fn version(v: CK_VERSION) -> (u8, u8) {
    (v.major, v.minor)
}

/// A message-based call's answer: its output and the parameter as the token left it.
pub fn message(o: Output, p: &CMsgParam) -> Response {
    Response::Message {
        rv: wire(o.rv),
        len: wire(o.len),
        data: o.data,
        param: p.to_wire(),
    }
}

/// An object handle from the wire, passed to the vendor as the application gave it.
pub fn object_handle(h: u64) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    CK_OBJECT_HANDLE::try_from(h).map_err(|_| CKR_OBJECT_HANDLE_INVALID)
}

/// A request that reached a chapter's dispatch without an arm there: its row's chapter and
/// its dispatch arm disagree (a mistake in this program, never the application's).
pub fn misrouted(request: &Request) -> CK_RV {
    let d = request.descriptor();
    tracing::error!(function = d.name, chapter = ?d.chapter, "no dispatch arm for this function in its chapter");
    CKR_GENERAL_ERROR
}
