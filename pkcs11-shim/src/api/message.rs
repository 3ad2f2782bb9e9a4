//! The message-based encryption, decryption, signing and verification functions of PKCS#11
//! v3.0 (§5.9 to §5.16). They are forwarded to the vendor library, which answers
//! CKR_FUNCTION_NOT_SUPPORTED when it implements PKCS#11 2.x only.

use std::ffi::c_void;

use cryptoki_sys::*;
use protocol::function::OpKind;
use protocol::message::{Request, Response};

use crate::client::{self, Client};
use crate::ffi::{entry, input, narrow, rv_of, unexpected, wire, OutBuf, Rv};
use crate::{mechanism, message};

/// Writes a [`Response::Message`]: the parameter the token updated, then the output.
unsafe fn finish(
    r: Response,
    param: *mut c_void,
    param_len: CK_ULONG,
    out: Option<OutBuf<'_, u8>>,
) -> Rv {
    match r {
        Response::Message {
            rv,
            len,
            data,
            param: answer,
        } => {
            message::write_back(param, param_len, &answer)?;
            match out {
                Some(out) => out.write(rv, len, &data),
                None => match narrow(rv)? {
                    CKR_OK => Ok(()),
                    rv => Err(rv),
                },
            }
        }
        other => Err(unexpected(other)),
    }
}

/// The caller's parameter for a message call of `op` on `session`.
unsafe fn read_param(
    client: &Client,
    session: CK_SESSION_HANDLE,
    op: OpKind,
    p: *mut c_void,
    n: CK_ULONG,
) -> Rv<protocol::mechanism::MsgParam> {
    message::read(client.message_mechanism(session, op), p, n)
}

/// `C_Message*Init(session, mechanism, key)`: remembers the mechanism on success.
macro_rules! message_init {
    ($(#[$doc:meta])* $name:ident => $variant:ident, $op:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(session: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
            entry!(stringify!($name), {
                let client = client::current()?;
                let mechanism = mechanism::read_message_init(mech)?;
                let ty = (*mech).mechanism;
                rv_of(client.call(Request::$variant { session: wire(session), mechanism, key: wire(key) })?)?;
                client.set_message_mechanism(session, $op, Some(ty));
                Ok(())
            })
        }
    };
}

/// `C_Message*Final(session)`: forgets the mechanism.
macro_rules! message_final {
    ($(#[$doc:meta])* $name:ident => $variant:ident, $op:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(session: CK_SESSION_HANDLE) -> CK_RV {
            entry!(stringify!($name), {
                let client = client::current()?;
                let r = rv_of(client.call(Request::$variant { session: wire(session) })?);
                if r.is_ok() {
                    client.set_message_mechanism(session, $op, None);
                }
                r
            })
        }
    };
}

/// C_EncryptMessage / C_DecryptMessage.
macro_rules! crypt_message {
    ($(#[$doc:meta])* $name:ident => $variant:ident, $op:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            session: CK_SESSION_HANDLE,
            p: *mut c_void,
            pl: CK_ULONG,
            aad: *mut CK_BYTE,
            aad_len: CK_ULONG,
            part: *mut CK_BYTE,
            part_len: CK_ULONG,
            output: *mut CK_BYTE,
            output_len: *mut CK_ULONG,
        ) -> CK_RV {
            entry!(stringify!($name), {
                let client = client::current()?;
                let param = read_param(&client, session, $op, p, pl)?;
                let aad = input(aad, aad_len)?;
                let data = input(part, part_len)?;
                let out = OutBuf::new(output, output_len)?;
                let r = client.call(Request::$variant { session: wire(session), param, aad, data, capacity: out.capacity() })?;
                finish(r, p, pl, Some(out))
            })
        }
    };
}

/// C_EncryptMessageBegin / C_DecryptMessageBegin.
macro_rules! crypt_begin {
    ($(#[$doc:meta])* $name:ident => $variant:ident, $op:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(session: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, aad: *mut CK_BYTE, aad_len: CK_ULONG) -> CK_RV {
            entry!(stringify!($name), {
                let client = client::current()?;
                let param = read_param(&client, session, $op, p, pl)?;
                let aad = input(aad, aad_len)?;
                finish(client.call(Request::$variant { session: wire(session), param, aad })?, p, pl, None)
            })
        }
    };
}

/// C_EncryptMessageNext / C_DecryptMessageNext.
macro_rules! crypt_next {
    ($(#[$doc:meta])* $name:ident => $variant:ident, $op:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            session: CK_SESSION_HANDLE,
            p: *mut c_void,
            pl: CK_ULONG,
            part: *mut CK_BYTE,
            part_len: CK_ULONG,
            output: *mut CK_BYTE,
            output_len: *mut CK_ULONG,
            flags: CK_FLAGS,
        ) -> CK_RV {
            entry!(stringify!($name), {
                let client = client::current()?;
                let param = read_param(&client, session, $op, p, pl)?;
                let data = input(part, part_len)?;
                let out = OutBuf::new(output, output_len)?;
                let r = client.call(Request::$variant {
                    session: wire(session),
                    param,
                    data,
                    capacity: out.capacity(),
                    flags: wire(flags),
                })?;
                finish(r, p, pl, Some(out))
            })
        }
    };
}

/// C_SignMessageBegin / C_VerifyMessageBegin.
macro_rules! sign_begin {
    ($(#[$doc:meta])* $name:ident => $variant:ident, $op:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(session: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG) -> CK_RV {
            entry!(stringify!($name), {
                let client = client::current()?;
                let param = read_param(&client, session, $op, p, pl)?;
                finish(client.call(Request::$variant { session: wire(session), param })?, p, pl, None)
            })
        }
    };
}

message_init!(/// C_MessageEncryptInit (v3.0 §5.9.1).
    C_MessageEncryptInit => MessageEncryptInit, OpKind::MessageEncrypt);
crypt_message!(/// C_EncryptMessage (v3.0 §5.9.2).
    C_EncryptMessage => EncryptMessage, OpKind::MessageEncrypt);
crypt_begin!(/// C_EncryptMessageBegin (v3.0 §5.9.3).
    C_EncryptMessageBegin => EncryptMessageBegin, OpKind::MessageEncrypt);
crypt_next!(/// C_EncryptMessageNext (v3.0 §5.9.4).
    C_EncryptMessageNext => EncryptMessageNext, OpKind::MessageEncrypt);
message_final!(/// C_MessageEncryptFinal (v3.0 §5.9.5).
    C_MessageEncryptFinal => MessageEncryptFinal, OpKind::MessageEncrypt);

message_init!(/// C_MessageDecryptInit (v3.0 §5.11.1).
    C_MessageDecryptInit => MessageDecryptInit, OpKind::MessageDecrypt);
crypt_message!(/// C_DecryptMessage (v3.0 §5.11.2).
    C_DecryptMessage => DecryptMessage, OpKind::MessageDecrypt);
crypt_begin!(/// C_DecryptMessageBegin (v3.0 §5.11.3).
    C_DecryptMessageBegin => DecryptMessageBegin, OpKind::MessageDecrypt);
crypt_next!(/// C_DecryptMessageNext (v3.0 §5.11.4).
    C_DecryptMessageNext => DecryptMessageNext, OpKind::MessageDecrypt);
message_final!(/// C_MessageDecryptFinal (v3.0 §5.11.5).
    C_MessageDecryptFinal => MessageDecryptFinal, OpKind::MessageDecrypt);

message_init!(/// C_MessageSignInit (v3.0 §5.14.1).
    C_MessageSignInit => MessageSignInit, OpKind::MessageSign);
sign_begin!(/// C_SignMessageBegin (v3.0 §5.14.3).
    C_SignMessageBegin => SignMessageBegin, OpKind::MessageSign);
message_final!(/// C_MessageSignFinal (v3.0 §5.14.5).
    C_MessageSignFinal => MessageSignFinal, OpKind::MessageSign);

message_init!(/// C_MessageVerifyInit (v3.0 §5.16.1).
    C_MessageVerifyInit => MessageVerifyInit, OpKind::MessageVerify);
sign_begin!(/// C_VerifyMessageBegin (v3.0 §5.16.3).
    C_VerifyMessageBegin => VerifyMessageBegin, OpKind::MessageVerify);
message_final!(/// C_MessageVerifyFinal (v3.0 §5.16.5).
    C_MessageVerifyFinal => MessageVerifyFinal, OpKind::MessageVerify);

/// C_SignMessage / C_SignMessageNext (`next`: a NULL `pulSignatureLen` there means "not the
/// last part", and no signature is written back).
macro_rules! sign_message {
    ($(#[$doc:meta])* $name:ident => $variant:ident, next: $next:literal) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            session: CK_SESSION_HANDLE,
            p: *mut c_void,
            pl: CK_ULONG,
            data: *mut CK_BYTE,
            data_len: CK_ULONG,
            signature: *mut CK_BYTE,
            signature_len: *mut CK_ULONG,
        ) -> CK_RV {
            entry!(stringify!($name), {
                let client = client::current()?;
                let param = read_param(&client, session, OpKind::MessageSign, p, pl)?;
                let data = input(data, data_len)?;
                let out = OutBuf::new(signature, signature_len)?;
                let capacity = out.capacity();
                let r = client.call(Request::$variant {
                    session: wire(session),
                    param,
                    data,
                    capacity,
                })?;
                let last = !$next || !signature_len.is_null();
                finish(r, p, pl, last.then_some(out))
            })
        }
    };
}

sign_message!(/// C_SignMessage (v3.0 §5.14.2).
    C_SignMessage => SignMessage, next: false);
sign_message!(/// C_SignMessageNext (v3.0 §5.14.4).
    C_SignMessageNext => SignMessageNext, next: true);

/// C_VerifyMessage / C_VerifyMessageNext (a NULL `pSignature` in the latter means "not the
/// last part").
macro_rules! verify_message {
    ($(#[$doc:meta])* $name:ident => $variant:ident) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            session: CK_SESSION_HANDLE,
            p: *mut c_void,
            pl: CK_ULONG,
            data: *mut CK_BYTE,
            data_len: CK_ULONG,
            signature: *mut CK_BYTE,
            signature_len: CK_ULONG,
        ) -> CK_RV {
            entry!(stringify!($name), {
                let client = client::current()?;
                let param = read_param(&client, session, OpKind::MessageVerify, p, pl)?;
                let data = input(data, data_len)?;
                let signature = input(signature, signature_len)?;
                let r = client.call(Request::$variant { session: wire(session), param, data, signature })?;
                finish(r, p, pl, None)
            })
        }
    };
}

verify_message!(/// C_VerifyMessage (v3.0 §5.16.2).
    C_VerifyMessage => VerifyMessage);
verify_message!(/// C_VerifyMessageNext (v3.0 §5.16.4).
    C_VerifyMessageNext => VerifyMessageNext);
