//! Key management and random number functions (PKCS#11 v2.40 §5.14, §5.15), and v3.2's key
//! encapsulation and authenticated wrapping.

use cryptoki_sys::*;
use protocol::message::{Request, Response};
use protocol::shape::Outputs;

use crate::api::object::write_handle;
use crate::client;
use crate::ffi::{entry, input, len, narrow, put, rv_of, unexpected, wire, OutBuf};
use crate::{mechanism, template};

/// C_GenerateKey (v2.40 §5.14.1).
#[no_mangle]
pub unsafe extern "C" fn C_GenerateKey(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    t: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    entry!("C_GenerateKey", {
        let client = client::current()?;
        let mechanism = mechanism::read(mech)?;
        let template = template::read(t, count)?;
        write_handle(
            client.call(Request::GenerateKey {
                session: wire(session),
                mechanism,
                template,
                outputs: Outputs::of(&[!key.is_null()]),
            })?,
            key,
        )
    })
}

/// C_GenerateKeyPair (v2.40 §5.14.2).
#[no_mangle]
pub unsafe extern "C" fn C_GenerateKeyPair(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    public_t: *mut CK_ATTRIBUTE,
    public_count: CK_ULONG,
    private_t: *mut CK_ATTRIBUTE,
    private_count: CK_ULONG,
    public_key: *mut CK_OBJECT_HANDLE,
    private_key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    entry!("C_GenerateKeyPair", {
        let client = client::current()?;
        let mechanism = mechanism::read(mech)?;
        let public_template = template::read(public_t, public_count)?;
        let private_template = template::read(private_t, private_count)?;
        let r = client.call(Request::GenerateKeyPair {
            session: wire(session),
            mechanism,
            public_template,
            private_template,
            outputs: Outputs::of(&[!public_key.is_null(), !private_key.is_null()]),
        })?;
        match r {
            Response::KeyPair {
                public_key: p,
                private_key: k,
            } => {
                put(public_key, narrow(p)?);
                put(private_key, narrow(k)?);
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    })
}

/// C_WrapKey (v2.40 §5.14.3), with the two-call size convention.
#[no_mangle]
pub unsafe extern "C" fn C_WrapKey(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    wrapping_key: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    wrapped: *mut CK_BYTE,
    wrapped_len: *mut CK_ULONG,
) -> CK_RV {
    entry!("C_WrapKey", {
        let client = client::current()?;
        let mechanism = mechanism::read(mech)?;
        let buf = OutBuf::new(wrapped, wrapped_len)?;
        let r = client.call(Request::WrapKey {
            session: wire(session),
            mechanism,
            wrapping_key: wire(wrapping_key),
            key: wire(key),
            capacity: buf.capacity(),
        })?;
        buf.write_output(r)
    })
}

/// C_UnwrapKey (v2.40 §5.14.4).
#[no_mangle]
pub unsafe extern "C" fn C_UnwrapKey(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    unwrapping_key: CK_OBJECT_HANDLE,
    wrapped: *mut CK_BYTE,
    wrapped_len: CK_ULONG,
    t: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    entry!("C_UnwrapKey", {
        let client = client::current()?;
        let mechanism = mechanism::read(mech)?;
        let wrapped_key = input(wrapped, wrapped_len)?;
        let template = template::read(t, count)?;
        let r = client.call(Request::UnwrapKey {
            session: wire(session),
            mechanism,
            unwrapping_key: wire(unwrapping_key),
            wrapped_key,
            template,
            outputs: Outputs::of(&[!key.is_null()]),
        })?;
        write_handle(r, key)
    })
}

/// C_DeriveKey (v2.40 §5.14.5).
#[no_mangle]
pub unsafe extern "C" fn C_DeriveKey(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    base_key: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    entry!("C_DeriveKey", {
        let client = client::current()?;
        let mechanism = mechanism::read(mech)?;
        let template = template::read(t, count)?;
        let r = client.call(Request::DeriveKey {
            session: wire(session),
            mechanism,
            base_key: wire(base_key),
            template,
            outputs: Outputs::of(&[!key.is_null()]),
        })?;
        write_handle(r, key)
    })
}

/// C_EncapsulateKey (v3.2): a new key and its ciphertext from the other party's public key;
/// the ciphertext with the two-call size convention (the key is made only by the call that
/// writes it).
#[no_mangle]
pub unsafe extern "C" fn C_EncapsulateKey(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    public_key: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    ciphertext: *mut CK_BYTE,
    ciphertext_len: *mut CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    entry!("C_EncapsulateKey", {
        let client = client::current()?;
        let mechanism = mechanism::read(mech)?;
        let template = template::read(t, count)?;
        let buf = OutBuf::new(ciphertext, ciphertext_len)?;
        let r = client.call(Request::EncapsulateKey {
            session: wire(session),
            mechanism,
            public_key: wire(public_key),
            template,
            capacity: buf.capacity(),
            outputs: Outputs::of(&[!key.is_null()]),
        })?;
        match r {
            Response::Encapsulated {
                rv,
                len,
                data,
                key: made,
            } => {
                if let Some(made) = made {
                    put(key, narrow(made)?);
                }
                buf.write(rv, len, &data)
            }
            other => Err(unexpected(other)),
        }
    })
}

/// C_DecapsulateKey (v3.2): the key the ciphertext carries, with the private key.
#[no_mangle]
pub unsafe extern "C" fn C_DecapsulateKey(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    private_key: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    ciphertext: *mut CK_BYTE,
    ciphertext_len: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    entry!("C_DecapsulateKey", {
        let client = client::current()?;
        let mechanism = mechanism::read(mech)?;
        let template = template::read(t, count)?;
        let ciphertext = input(ciphertext, ciphertext_len)?;
        let r = client.call(Request::DecapsulateKey {
            session: wire(session),
            mechanism,
            private_key: wire(private_key),
            template,
            ciphertext,
            outputs: Outputs::of(&[!key.is_null()]),
        })?;
        write_handle(r, key)
    })
}

/// C_WrapKeyAuthenticated (v3.2): C_WrapKey with associated data, two-call convention.
#[no_mangle]
pub unsafe extern "C" fn C_WrapKeyAuthenticated(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    wrapping_key: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    associated_data: *mut CK_BYTE,
    associated_data_len: CK_ULONG,
    wrapped: *mut CK_BYTE,
    wrapped_len: *mut CK_ULONG,
) -> CK_RV {
    entry!("C_WrapKeyAuthenticated", {
        let client = client::current()?;
        let mechanism = mechanism::read(mech)?;
        let associated_data = input(associated_data, associated_data_len)?;
        let buf = OutBuf::new(wrapped, wrapped_len)?;
        let r = client.call(Request::WrapKeyAuthenticated {
            session: wire(session),
            mechanism,
            wrapping_key: wire(wrapping_key),
            key: wire(key),
            associated_data,
            capacity: buf.capacity(),
        })?;
        buf.write_output(r)
    })
}

/// C_UnwrapKeyAuthenticated (v3.2): C_UnwrapKey with associated data.
#[no_mangle]
pub unsafe extern "C" fn C_UnwrapKeyAuthenticated(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    unwrapping_key: CK_OBJECT_HANDLE,
    wrapped: *mut CK_BYTE,
    wrapped_len: CK_ULONG,
    t: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    associated_data: *mut CK_BYTE,
    associated_data_len: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    entry!("C_UnwrapKeyAuthenticated", {
        let client = client::current()?;
        let mechanism = mechanism::read(mech)?;
        let wrapped_key = input(wrapped, wrapped_len)?;
        let template = template::read(t, count)?;
        let associated_data = input(associated_data, associated_data_len)?;
        let r = client.call(Request::UnwrapKeyAuthenticated {
            session: wire(session),
            mechanism,
            unwrapping_key: wire(unwrapping_key),
            wrapped_key,
            template,
            associated_data,
            outputs: Outputs::of(&[!key.is_null()]),
        })?;
        write_handle(r, key)
    })
}

/// C_SeedRandom (v2.40 §5.15.1).
#[no_mangle]
pub unsafe extern "C" fn C_SeedRandom(
    session: CK_SESSION_HANDLE,
    seed: *mut CK_BYTE,
    seed_len: CK_ULONG,
) -> CK_RV {
    entry!("C_SeedRandom", {
        let client = client::current()?;
        let seed = input(seed, seed_len)?;
        rv_of(client.call(Request::SeedRandom {
            session: wire(session),
            seed,
        })?)
    })
}

/// C_GenerateRandom (v2.40 §5.15.2).
#[no_mangle]
pub unsafe extern "C" fn C_GenerateRandom(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
) -> CK_RV {
    entry!("C_GenerateRandom", {
        let client = client::current()?;
        let n = len(data_len)?;
        match client.call(Request::GenerateRandom {
            session: wire(session),
            len: n as u64,
            outputs: Outputs::of(&[!data.is_null()]),
        })? {
            Response::Output {
                rv: 0,
                data: random,
                ..
            } if random.len() == n || data.is_null() => {
                if n > 0 && !data.is_null() {
                    std::ptr::copy_nonoverlapping(random.as_ptr(), data, n);
                }
                Ok(())
            }
            Response::Output { .. } => Err(CKR_GENERAL_ERROR),
            other => rv_of(other),
        }
    })
}
