//! Parameters of the PKCS#11 v3.0 message-based functions (v3.0 §5.9 to §5.16), read from
//! and written back to the caller's structure.
//!
//! `C_EncryptMessage` and friends carry no mechanism: the layout of `pParameter` is the one of
//! the mechanism given to the `C_Message*Init` of the session, which the shim remembers.
//! Buffers the token writes (a generated IV or nonce, the tag or MAC) are copied back after
//! the call, with the lengths the caller gave.

use std::ffi::c_void;
use std::mem::size_of;

use cryptoki_sys::*;
use protocol::mechanism::MsgParam;

use crate::ffi::{bytes, len, wire, Rv};

/// Length of a Poly1305 tag.
const POLY1305_TAG: usize = 16;

/// Reads the caller's parameter as a `T`, checking its length first.
unsafe fn param<T>(p: *mut c_void, n: CK_ULONG) -> Rv<T> {
    if p.is_null() || len(n)? != size_of::<T>() {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    Ok((p as *const T).read_unaligned())
}

/// A buffer of a message parameter: its bytes, or zeros of its length where the pointer is
/// NULL (the token fills it); a length no frame carries is refused before anything is made.
unsafe fn buf(p: *const u8, n: usize) -> Rv<Vec<u8>> {
    let n = crate::ffi::carried(CK_ULONG::try_from(n).map_err(|_| CKR_ARGUMENTS_BAD)?)?;
    if p.is_null() {
        return Ok(vec![0; n]);
    }
    Ok(std::slice::from_raw_parts(p, n).to_vec())
}

/// Reads the parameter of a message call for a session whose message operation uses `mech`.
///
/// # Safety
/// `p` must be NULL or point to `n` readable bytes laid out as the mechanism's parameter, whose
/// pointers are valid for the lengths they state.
pub unsafe fn read(mech: CK_MECHANISM_TYPE, p: *mut c_void, n: CK_ULONG) -> Rv<MsgParam> {
    if p.is_null() {
        return if n == 0 {
            Ok(MsgParam::None)
        } else {
            Err(CKR_ARGUMENTS_BAD)
        };
    }
    Ok(match mech {
        CKM_AES_GCM => {
            let g: CK_GCM_MESSAGE_PARAMS = param(p, n)?;
            let tag_len = len(g.ulTagBits)?.div_ceil(8);
            MsgParam::Gcm {
                iv: buf(g.pIv, len(g.ulIvLen)?)?,
                iv_fixed_bits: wire(g.ulIvFixedBits),
                iv_generator: wire(g.ivGenerator),
                tag: buf(g.pTag, tag_len)?,
                tag_bits: wire(g.ulTagBits),
            }
        }
        CKM_AES_CCM => {
            let c: CK_CCM_MESSAGE_PARAMS = param(p, n)?;
            MsgParam::Ccm {
                data_len: wire(c.ulDataLen),
                nonce: buf(c.pNonce, len(c.ulNonceLen)?)?,
                nonce_fixed_bits: wire(c.ulNonceFixedBits),
                nonce_generator: wire(c.nonceGenerator),
                mac: buf(c.pMAC, len(c.ulMACLen)?)?,
            }
        }
        CKM_CHACHA20_POLY1305 | CKM_SALSA20_POLY1305 => {
            let c: CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS = param(p, n)?;
            MsgParam::ChaCha20Poly1305 {
                nonce: buf(c.pNonce, len(c.ulNonceLen)?)?,
                tag: buf(c.pTag, POLY1305_TAG)?,
            }
        }
        _ => MsgParam::Bytes(bytes(p as *const u8, n)?.to_vec()),
    })
}

/// Copies what the token wrote (IV/nonce, tag/MAC) into the caller's buffers. A server
/// answering with other lengths than the caller's is refused.
///
/// # Safety
/// As [`read`], with writable buffers.
pub unsafe fn write_back(p: *mut c_void, n: CK_ULONG, answer: &MsgParam) -> Rv {
    if p.is_null() {
        return Ok(());
    }
    unsafe fn put(dst: *mut u8, want: usize, src: &[u8]) -> Rv {
        if src.len() != want {
            return Err(CKR_GENERAL_ERROR);
        }
        if !dst.is_null() && want > 0 {
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst, want);
        }
        Ok(())
    }
    match answer {
        MsgParam::Gcm { iv, tag, .. } => {
            let g: CK_GCM_MESSAGE_PARAMS = param(p, n)?;
            put(g.pIv, len(g.ulIvLen)?, iv)?;
            put(g.pTag, len(g.ulTagBits)?.div_ceil(8), tag)
        }
        MsgParam::Ccm { nonce, mac, .. } => {
            let c: CK_CCM_MESSAGE_PARAMS = param(p, n)?;
            put(c.pNonce, len(c.ulNonceLen)?, nonce)?;
            put(c.pMAC, len(c.ulMACLen)?, mac)
        }
        MsgParam::ChaCha20Poly1305 { nonce, tag } => {
            let c: CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS = param(p, n)?;
            put(c.pNonce, len(c.ulNonceLen)?, nonce)?;
            put(c.pTag, POLY1305_TAG, tag)
        }
        MsgParam::None | MsgParam::Bytes(_) => Ok(()),
    }
}
