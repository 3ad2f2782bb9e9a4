//! Object management functions (PKCS#11 v2.40 §5.7).

use cryptoki_sys::*;
use protocol::message::{Request, Response};
use protocol::shape::Outputs;

use crate::client;
use crate::ffi::{entry, len, narrow, put, rv_of, unexpected, wire, write_answer};
use crate::template;

/// Writes a `Response::Handle` into the caller's handle (when not NULL).
///
/// # Safety
/// `h` must be NULL or writable.
pub(crate) unsafe fn write_handle(r: Response, h: *mut CK_OBJECT_HANDLE) -> crate::ffi::Rv {
    write_answer!(r, Response::Handle, h, |v| narrow(v)?)
}

/// C_CreateObject (v2.40 §5.7.1).
#[no_mangle]
pub unsafe extern "C" fn C_CreateObject(
    session: CK_SESSION_HANDLE,
    t: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    object: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    entry!("C_CreateObject", {
        let client = client::current()?;
        let template = template::read(t, count)?;
        write_handle(
            client.call(Request::CreateObject {
                session: wire(session),
                template,
                outputs: Outputs::of(&[!object.is_null()]),
            })?,
            object,
        )
    })
}

/// C_CopyObject (v2.40 §5.7.2).
#[no_mangle]
pub unsafe extern "C" fn C_CopyObject(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    new_object: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    entry!("C_CopyObject", {
        let client = client::current()?;
        let template = template::read(t, count)?;
        let r = client.call(Request::CopyObject {
            session: wire(session),
            object: wire(object),
            template,
            outputs: Outputs::of(&[!new_object.is_null()]),
        })?;
        write_handle(r, new_object)
    })
}

/// C_DestroyObject (v2.40 §5.7.3).
#[no_mangle]
pub unsafe extern "C" fn C_DestroyObject(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> CK_RV {
    entry!("C_DestroyObject", {
        rv_of(client::call(Request::DestroyObject {
            session: wire(session),
            object: wire(object),
        })?)
    })
}

/// C_GetObjectSize (v2.40 §5.7.4).
#[no_mangle]
pub unsafe extern "C" fn C_GetObjectSize(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    size: *mut CK_ULONG,
) -> CK_RV {
    entry!("C_GetObjectSize", {
        let client = client::current()?;
        let r = client.call(Request::GetObjectSize {
            session: wire(session),
            object: wire(object),
            outputs: Outputs::of(&[!size.is_null()]),
        })?;
        write_answer!(r, Response::Size, size, |s| narrow(s)?)
    })
}

/// C_GetAttributeValue (v2.40 §5.7.5): every attribute gets its own result (value, length,
/// or CK_UNAVAILABLE_INFORMATION), whatever the call returns.
#[no_mangle]
pub unsafe extern "C" fn C_GetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    entry!("C_GetAttributeValue", {
        let client = client::current()?;
        let query = template::query(t, count)?;
        match client.call(Request::GetAttributeValue {
            session: wire(session),
            object: wire(object),
            query,
            complete: false,
        })? {
            Response::Attributes { rv, values } => {
                match template::write_results(t, count, &values, narrow(rv)?)? {
                    CKR_OK => Ok(()),
                    rv => Err(rv),
                }
            }
            other => Err(unexpected(other)),
        }
    })
}

/// C_SetAttributeValue (v2.40 §5.7.6).
#[no_mangle]
pub unsafe extern "C" fn C_SetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    entry!("C_SetAttributeValue", {
        let client = client::current()?;
        let template = template::read(t, count)?;
        rv_of(client.call(Request::SetAttributeValue {
            session: wire(session),
            object: wire(object),
            template,
        })?)
    })
}

/// C_FindObjectsInit (v2.40 §5.7.7).
#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsInit(
    session: CK_SESSION_HANDLE,
    t: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    entry!("C_FindObjectsInit", {
        let client = client::current()?;
        let template = template::read(t, count)?;
        rv_of(client.call(Request::FindObjectsInit {
            session: wire(session),
            template,
            prefetch: 0,
        })?)
    })
}

/// C_FindObjects (v2.40 §5.7.8).
#[no_mangle]
pub unsafe extern "C" fn C_FindObjects(
    session: CK_SESSION_HANDLE,
    objects: *mut CK_OBJECT_HANDLE,
    max_count: CK_ULONG,
    count: *mut CK_ULONG,
) -> CK_RV {
    entry!("C_FindObjects", {
        let client = client::current()?;
        let max = if objects.is_null() {
            0
        } else {
            len(max_count)?
        };
        match client.call(Request::FindObjects {
            session: wire(session),
            max_count: wire(max_count),
            outputs: Outputs::of(&[!objects.is_null(), !count.is_null()]),
        })? {
            Response::Ulongs { rv, values, .. } => {
                let rv = narrow(rv)?;
                if rv != CKR_OK {
                    return Err(rv);
                }
                if values.len() > max {
                    return Err(CKR_GENERAL_ERROR);
                }
                for (i, v) in values.iter().enumerate() {
                    *objects.add(i) = narrow(*v)?;
                }
                put(count, values.len() as CK_ULONG);
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    })
}

/// C_FindObjectsFinal (v2.40 §5.7.9).
#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsFinal(session: CK_SESSION_HANDLE) -> CK_RV {
    entry!("C_FindObjectsFinal", {
        rv_of(client::call(Request::FindObjectsFinal {
            session: wire(session),
        })?)
    })
}
