//! Encryption, decryption, digest, signing, verification and dual-function functions
//! (PKCS#11 v2.40 §5.8 to §5.13), and v3.2's verification with the signature given at init.
//!
//! Outputs follow the two-call convention (v2.40 §5.2): the request carries the caller's
//! buffer capacity (or its absence) and the vendor library's answer is reproduced as it is,
//! so an operation continues after a size query or CKR_BUFFER_TOO_SMALL exactly as it would
//! without the proxy.

use cryptoki_sys::*;
use protocol::message::Request;

use crate::client;
use crate::ffi::{entry, input, rv_of, wire, OutBuf};
use crate::mechanism;

/// `C_*Init(session, mechanism, key)`.
macro_rules! init_fn {
    ($(#[$doc:meta])* $name:ident => $variant:ident) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(session: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
            entry!(stringify!($name), {
                let client = client::current()?;
                let mechanism = mechanism::read(mech)?;
                rv_of(client.call(Request::$variant { session: wire(session), mechanism, key: wire(key) })?)
            })
        }
    };
}

/// `C_*(session, in, in_len, out, out_len)` with a size-query output.
macro_rules! update_fn {
    ($(#[$doc:meta])* $name:ident => $variant:ident { $field:ident }) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            session: CK_SESSION_HANDLE,
            part: *mut CK_BYTE,
            part_len: CK_ULONG,
            output: *mut CK_BYTE,
            output_len: *mut CK_ULONG,
        ) -> CK_RV {
            entry!(stringify!($name), {
                let client = client::current()?;
                let $field = input(part, part_len)?;
                let buf = OutBuf::new(output, output_len)?;
                let r = client.call(Request::$variant { session: wire(session), $field, capacity: buf.capacity() })?;
                buf.write_output(r)
            })
        }
    };
}

/// `C_*Final(session, out, out_len)` with a size-query output.
macro_rules! final_fn {
    ($(#[$doc:meta])* $name:ident => $variant:ident) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(session: CK_SESSION_HANDLE, output: *mut CK_BYTE, output_len: *mut CK_ULONG) -> CK_RV {
            entry!(stringify!($name), {
                let client = client::current()?;
                let buf = OutBuf::new(output, output_len)?;
                let r = client.call(Request::$variant { session: wire(session), capacity: buf.capacity() })?;
                buf.write_output(r)
            })
        }
    };
}

/// `C_*(session, in, in_len)` without output.
macro_rules! input_fn {
    ($(#[$doc:meta])* $name:ident => $variant:ident { $field:ident }) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(session: CK_SESSION_HANDLE, part: *mut CK_BYTE, part_len: CK_ULONG) -> CK_RV {
            entry!(stringify!($name), {
                let client = client::current()?;
                let $field = input(part, part_len)?;
                rv_of(client.call(Request::$variant { session: wire(session), $field })?)
            })
        }
    };
}

init_fn!(/// C_EncryptInit (v2.40 §5.8.1).
    C_EncryptInit => EncryptInit);
update_fn!(/// C_Encrypt (v2.40 §5.8.2).
    C_Encrypt => Encrypt { data });
update_fn!(/// C_EncryptUpdate (v2.40 §5.8.3).
    C_EncryptUpdate => EncryptUpdate { data });
final_fn!(/// C_EncryptFinal (v2.40 §5.8.4).
    C_EncryptFinal => EncryptFinal);

init_fn!(/// C_DecryptInit (v2.40 §5.9.1).
    C_DecryptInit => DecryptInit);
update_fn!(/// C_Decrypt (v2.40 §5.9.2).
    C_Decrypt => Decrypt { data });
update_fn!(/// C_DecryptUpdate (v2.40 §5.9.3).
    C_DecryptUpdate => DecryptUpdate { data });
final_fn!(/// C_DecryptFinal (v2.40 §5.9.4).
    C_DecryptFinal => DecryptFinal);

/// C_DigestInit (v2.40 §5.10.1).
#[no_mangle]
pub unsafe extern "C" fn C_DigestInit(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
) -> CK_RV {
    entry!("C_DigestInit", {
        let client = client::current()?;
        let mechanism = mechanism::read(mech)?;
        rv_of(client.call(Request::DigestInit {
            session: wire(session),
            mechanism,
        })?)
    })
}
update_fn!(/// C_Digest (v2.40 §5.10.2).
    C_Digest => Digest { data });
input_fn!(/// C_DigestUpdate (v2.40 §5.10.3).
    C_DigestUpdate => DigestUpdate { data });
/// C_DigestKey (v2.40 §5.10.4).
#[no_mangle]
pub unsafe extern "C" fn C_DigestKey(session: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
    entry!("C_DigestKey", {
        rv_of(client::call(Request::DigestKey {
            session: wire(session),
            key: wire(key),
        })?)
    })
}
final_fn!(/// C_DigestFinal (v2.40 §5.10.5).
    C_DigestFinal => DigestFinal);

init_fn!(/// C_SignInit (v2.40 §5.11.1).
    C_SignInit => SignInit);
update_fn!(/// C_Sign (v2.40 §5.11.2).
    C_Sign => Sign { data });
input_fn!(/// C_SignUpdate (v2.40 §5.11.3).
    C_SignUpdate => SignUpdate { data });
final_fn!(/// C_SignFinal (v2.40 §5.11.4).
    C_SignFinal => SignFinal);
init_fn!(/// C_SignRecoverInit (v2.40 §5.11.5).
    C_SignRecoverInit => SignRecoverInit);
update_fn!(/// C_SignRecover (v2.40 §5.11.6).
    C_SignRecover => SignRecover { data });

init_fn!(/// C_VerifyInit (v2.40 §5.12.1).
    C_VerifyInit => VerifyInit);
/// C_Verify (v2.40 §5.12.2).
#[no_mangle]
pub unsafe extern "C" fn C_Verify(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    signature: *mut CK_BYTE,
    signature_len: CK_ULONG,
) -> CK_RV {
    entry!("C_Verify", {
        let client = client::current()?;
        let data = input(data, data_len)?;
        let signature = input(signature, signature_len)?;
        rv_of(client.call(Request::Verify {
            session: wire(session),
            data,
            signature,
        })?)
    })
}
input_fn!(/// C_VerifyUpdate (v2.40 §5.12.3).
    C_VerifyUpdate => VerifyUpdate { data });
input_fn!(/// C_VerifyFinal (v2.40 §5.12.4).
    C_VerifyFinal => VerifyFinal { signature });
init_fn!(/// C_VerifyRecoverInit (v2.40 §5.12.5).
    C_VerifyRecoverInit => VerifyRecoverInit);
update_fn!(/// C_VerifyRecover (v2.40 §5.12.6).
    C_VerifyRecover => VerifyRecover { signature });

/// C_VerifySignatureInit (v3.2): C_VerifyInit with the signature given at init.
#[no_mangle]
pub unsafe extern "C" fn C_VerifySignatureInit(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
    signature: *mut CK_BYTE,
    signature_len: CK_ULONG,
) -> CK_RV {
    entry!("C_VerifySignatureInit", {
        let client = client::current()?;
        let mechanism = mechanism::read(mech)?;
        let signature = input(signature, signature_len)?;
        rv_of(client.call(Request::VerifySignatureInit {
            session: wire(session),
            mechanism,
            key: wire(key),
            signature,
        })?)
    })
}
input_fn!(/// C_VerifySignature (v3.2): the data, single-part; ends the operation.
    C_VerifySignature => VerifySignature { data });
input_fn!(/// C_VerifySignatureUpdate (v3.2).
    C_VerifySignatureUpdate => VerifySignatureUpdate { data });
/// C_VerifySignatureFinal (v3.2): the signature was given at init.
#[no_mangle]
pub unsafe extern "C" fn C_VerifySignatureFinal(session: CK_SESSION_HANDLE) -> CK_RV {
    entry!("C_VerifySignatureFinal", {
        let client = client::current()?;
        rv_of(client.call(Request::VerifySignatureFinal {
            session: wire(session),
        })?)
    })
}

update_fn!(/// C_DigestEncryptUpdate (v2.40 §5.13.1).
    C_DigestEncryptUpdate => DigestEncryptUpdate { data });
update_fn!(/// C_DecryptDigestUpdate (v2.40 §5.13.2).
    C_DecryptDigestUpdate => DecryptDigestUpdate { data });
update_fn!(/// C_SignEncryptUpdate (v2.40 §5.13.3).
    C_SignEncryptUpdate => SignEncryptUpdate { data });
update_fn!(/// C_DecryptVerifyUpdate (v2.40 §5.13.4).
    C_DecryptVerifyUpdate => DecryptVerifyUpdate { data });
