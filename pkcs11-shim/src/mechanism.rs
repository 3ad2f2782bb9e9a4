//! The caller's `CK_MECHANISM` to a wire mechanism (PKCS#11 v2.40 §3.6; parameter structures
//! from the Current Mechanisms Specification v2.40).
//!
//! The parameter is read according to the mechanism type. Structures with pointers are
//! followed and sent as typed data; a structure without pointers that is not catalogued is
//! sent as raw bytes (same ABI on both ends, see `protocol::mechanism`); a mechanism known to
//! carry pointers that is not catalogued yet is refused with `CKR_MECHANISM_PARAM_INVALID`.

use std::mem::size_of;

use cryptoki_sys::*;
use protocol::c_layout::GcmParamsNoIvBits;
use protocol::mechanism::{MechParam, Mechanism, MsgParam};

use crate::ffi::{bytes, wire, Rv, ULONG};

/// Mechanisms whose parameter is a `CK_RSA_PKCS_PSS_PARAMS`.
const PSS: &[CK_MECHANISM_TYPE] = &[
    CKM_RSA_PKCS_PSS,
    CKM_SHA1_RSA_PKCS_PSS,
    CKM_SHA224_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS,
    CKM_SHA512_RSA_PKCS_PSS,
    CKM_SHA3_224_RSA_PKCS_PSS,
    CKM_SHA3_256_RSA_PKCS_PSS,
    CKM_SHA3_384_RSA_PKCS_PSS,
    CKM_SHA3_512_RSA_PKCS_PSS,
];

/// Mechanisms whose parameter is a `CK_MAC_GENERAL_PARAMS` (one CK_ULONG).
const MAC_GENERAL: &[CK_MECHANISM_TYPE] = &[
    CKM_MD5_HMAC_GENERAL,
    CKM_SHA_1_HMAC_GENERAL,
    CKM_SHA224_HMAC_GENERAL,
    CKM_SHA256_HMAC_GENERAL,
    CKM_SHA384_HMAC_GENERAL,
    CKM_SHA512_HMAC_GENERAL,
    CKM_AES_MAC_GENERAL,
    CKM_AES_CMAC_GENERAL,
    CKM_DES3_MAC_GENERAL,
    CKM_DES3_CMAC_GENERAL,
];

/// Mechanisms whose parameter is a `CK_KEY_DERIVATION_STRING_DATA`.
const DERIVATION_STRING: &[CK_MECHANISM_TYPE] = &[
    CKM_CONCATENATE_BASE_AND_DATA,
    CKM_CONCATENATE_DATA_AND_BASE,
    CKM_XOR_BASE_AND_DATA,
    CKM_DES_ECB_ENCRYPT_DATA,
    CKM_DES3_ECB_ENCRYPT_DATA,
    CKM_AES_ECB_ENCRYPT_DATA,
];

/// Mechanisms whose parameter is a `CK_SIGN_ADDITIONAL_CONTEXT` (PKCS#11 v3.2 Mechanisms,
/// ML-DSA and SLH-DSA: pure, and pre-hashed with the hash named by the mechanism).
const SIGN_CONTEXT: &[CK_MECHANISM_TYPE] = &[
    CKM_ML_DSA,
    CKM_HASH_ML_DSA_SHA224,
    CKM_HASH_ML_DSA_SHA256,
    CKM_HASH_ML_DSA_SHA384,
    CKM_HASH_ML_DSA_SHA512,
    CKM_HASH_ML_DSA_SHA3_224,
    CKM_HASH_ML_DSA_SHA3_256,
    CKM_HASH_ML_DSA_SHA3_384,
    CKM_HASH_ML_DSA_SHA3_512,
    CKM_HASH_ML_DSA_SHAKE128,
    CKM_HASH_ML_DSA_SHAKE256,
    CKM_SLH_DSA,
    CKM_HASH_SLH_DSA_SHA224,
    CKM_HASH_SLH_DSA_SHA256,
    CKM_HASH_SLH_DSA_SHA384,
    CKM_HASH_SLH_DSA_SHA512,
    CKM_HASH_SLH_DSA_SHA3_224,
    CKM_HASH_SLH_DSA_SHA3_256,
    CKM_HASH_SLH_DSA_SHA3_384,
    CKM_HASH_SLH_DSA_SHA3_512,
    CKM_HASH_SLH_DSA_SHAKE128,
    CKM_HASH_SLH_DSA_SHAKE256,
];

/// Mechanisms whose parameter is a `CK_HASH_SIGN_ADDITIONAL_CONTEXT` (v3.2 Mechanisms: the
/// pre-hash mechanism is in the parameter).
const HASH_SIGN_CONTEXT: &[CK_MECHANISM_TYPE] = &[CKM_HASH_ML_DSA, CKM_HASH_SLH_DSA];

/// Mechanisms whose parameter structure holds pointers and is not in the typed catalogue yet:
/// sending their bytes would send this process's addresses, so they are refused.
const POINTER_PARAMS: &[CK_MECHANISM_TYPE] = &[
    CKM_ECMQV_DERIVE,
    CKM_X9_42_DH_DERIVE,
    CKM_X9_42_DH_HYBRID_DERIVE,
    CKM_X9_42_MQV_DERIVE,
    CKM_PKCS5_PBKD2,
    CKM_KEY_WRAP_SET_OAEP,
    CKM_CHACHA20_POLY1305,
    CKM_SALSA20_POLY1305,
    CKM_HKDF_DERIVE,
    CKM_HKDF_DATA,
    CKM_SP800_108_COUNTER_KDF,
    CKM_SP800_108_FEEDBACK_KDF,
    CKM_SP800_108_DOUBLE_PIPELINE_KDF,
    CKM_TLS12_KEY_AND_MAC_DERIVE,
    CKM_TLS12_MASTER_KEY_DERIVE,
    CKM_TLS_KDF,
    CKM_TLS_PRF,
    CKM_SSL3_MASTER_KEY_DERIVE,
    CKM_SSL3_KEY_AND_MAC_DERIVE,
    CKM_TLS_MASTER_KEY_DERIVE,
    CKM_TLS_KEY_AND_MAC_DERIVE,
];

/// [`param`]'s answer for a parameter whose length is not its structure's: never returned by
/// [`read`], which sends such a parameter as zeros of the caller's length instead.
const MISFIT: CK_RV = CKR_VENDOR_DEFINED | 0x0050_524f;

/// Reads the caller's parameter as a `T`, checking its length first: a parameter of another
/// length is [`MISFIT`].
///
/// # Safety
/// `m.pParameter` must point to `m.ulParameterLen` readable bytes.
unsafe fn param<T>(m: &CK_MECHANISM) -> Rv<T> {
    if m.pParameter.is_null() || m.ulParameterLen as usize != size_of::<T>() {
        return Err(MISFIT);
    }
    Ok((m.pParameter as *const T).read_unaligned())
}

/// A NULL `pMechanism`, as it travels: the vendor gets NULL and answers (the vendor decides).
fn absent() -> Mechanism {
    Mechanism {
        ty: 0,
        param: MechParam::Absent,
    }
}

/// Reads a mechanism. A parameter whose length is not that of its mechanism's structure
/// travels as that many zero bytes (DESIGN.md, "The vendor decides"): the vendor answers the
/// length it sees (kryoptic and SoftHSM2 CKR_ARGUMENTS_BAD, others
/// CKR_MECHANISM_PARAM_INVALID), and no pointer of this process leaves it.
///
/// # Safety
/// `p` must be NULL or point to a valid `CK_MECHANISM` whose parameter is readable.
pub unsafe fn read(p: *const CK_MECHANISM) -> Rv<Mechanism> {
    match read_typed(p) {
        Err(MISFIT) => {
            let m = &*p;
            let n = crate::ffi::carried(m.ulParameterLen)?;
            Ok(Mechanism {
                ty: wire(m.mechanism),
                param: MechParam::Bytes(vec![0; n]),
            })
        }
        other => other,
    }
}

/// [`read`], with a misfit parameter [`MISFIT`].
///
/// # Safety
/// As [`read`].
unsafe fn read_typed(p: *const CK_MECHANISM) -> Rv<Mechanism> {
    let Some(m) = p.as_ref() else {
        return Ok(absent());
    };
    let ty = m.mechanism;
    let param = if m.pParameter.is_null() {
        match m.ulParameterLen {
            0 => MechParam::None,
            // Nothing to read: the shape travels, and the vendor answers it.
            n => MechParam::Null(wire(n)),
        }
    } else if ty == CKM_RSA_PKCS_OAEP {
        oaep(param(m)?)?
    } else if ty == CKM_RSA_AES_KEY_WRAP {
        let p: CK_RSA_AES_KEY_WRAP_PARAMS = param(m)?;
        let inner = match p.pOAEPParams.is_null() {
            true => None,
            false => Some(Box::new(oaep(p.pOAEPParams.read_unaligned())?)),
        };
        MechParam::RsaAesKeyWrap {
            aes_key_bits: wire(p.ulAESKeyBits),
            oaep: inner,
        }
    } else if PSS.contains(&ty) {
        let p: CK_RSA_PKCS_PSS_PARAMS = param(m)?;
        MechParam::RsaPkcsPss {
            hash_alg: wire(p.hashAlg),
            mgf: wire(p.mgf),
            salt_len: wire(p.sLen),
        }
    } else if ty == CKM_ECDH1_DERIVE || ty == CKM_ECDH1_COFACTOR_DERIVE {
        let p: CK_ECDH1_DERIVE_PARAMS = param(m)?;
        MechParam::Ecdh1Derive {
            kdf: wire(p.kdf),
            shared_data: param_bytes(p.pSharedData, p.ulSharedDataLen)?,
            public_data: param_bytes(p.pPublicData, p.ulPublicDataLen)?,
        }
    } else if ty == CKM_AES_CTR {
        let p: CK_AES_CTR_PARAMS = param(m)?;
        MechParam::AesCtr {
            counter_bits: wire(p.ulCounterBits),
            cb: p.cb,
        }
    } else if ty == CKM_AES_GCM {
        // Both layouts exist in the wild; the length tells which one the caller used.
        if m.ulParameterLen as usize == size_of::<CK_GCM_PARAMS>() {
            let p: CK_GCM_PARAMS = param(m)?;
            MechParam::Gcm {
                iv: param_bytes(p.pIv, p.ulIvLen)?,
                iv_bits: Some(wire(p.ulIvBits)),
                aad: param_bytes(p.pAAD, p.ulAADLen)?,
                tag_bits: wire(p.ulTagBits),
            }
        } else {
            let p: GcmParamsNoIvBits = param(m)?;
            MechParam::Gcm {
                iv: param_bytes(p.p_iv, p.ul_iv_len)?,
                iv_bits: None,
                aad: param_bytes(p.p_aad, p.ul_aad_len)?,
                tag_bits: wire(p.ul_tag_bits),
            }
        }
    } else if ty == CKM_AES_CCM {
        let p: CK_CCM_PARAMS = param(m)?;
        MechParam::Ccm {
            data_len: wire(p.ulDataLen),
            nonce: param_bytes(p.pNonce, p.ulNonceLen)?,
            aad: param_bytes(p.pAAD, p.ulAADLen)?,
            mac_len: wire(p.ulMACLen),
        }
    } else if DERIVATION_STRING.contains(&ty) {
        let p: CK_KEY_DERIVATION_STRING_DATA = param(m)?;
        MechParam::KeyDerivationString(param_bytes(p.pData, p.ulLen)?)
    } else if ty == CKM_AES_CBC_ENCRYPT_DATA {
        let p: CK_AES_CBC_ENCRYPT_DATA_PARAMS = param(m)?;
        MechParam::AesCbcEncryptData {
            iv: p.iv,
            data: param_bytes(p.pData, p.length)?,
        }
    } else if ty == CKM_DES_CBC_ENCRYPT_DATA || ty == CKM_DES3_CBC_ENCRYPT_DATA {
        let p: CK_DES_CBC_ENCRYPT_DATA_PARAMS = param(m)?;
        MechParam::DesCbcEncryptData {
            iv: p.iv,
            data: param_bytes(p.pData, p.length)?,
        }
    } else if ty == CKM_EDDSA {
        let p: CK_EDDSA_PARAMS = param(m)?;
        MechParam::Eddsa {
            prehash: p.phFlag != 0,
            context: param_bytes(p.pContextData, p.ulContextDataLen)?,
        }
    } else if SIGN_CONTEXT.contains(&ty) {
        let p: CK_SIGN_ADDITIONAL_CONTEXT = param(m)?;
        MechParam::SignContext {
            hedge: wire(p.hedgeVariant),
            context: context(p.pContext, p.ulContextLen)?,
            hash: None,
        }
    } else if HASH_SIGN_CONTEXT.contains(&ty) {
        let p: CK_HASH_SIGN_ADDITIONAL_CONTEXT = param(m)?;
        MechParam::SignContext {
            hedge: wire(p.hedgeVariant),
            context: context(p.pContext, p.ulContextLen)?,
            hash: Some(wire(p.hash)),
        }
    } else if MAC_GENERAL.contains(&ty) && m.ulParameterLen as usize == ULONG {
        MechParam::Ulong(wire(param::<CK_ULONG>(m)?))
    } else if POINTER_PARAMS.contains(&ty) {
        crate::log::warn(&format!(
            "mechanism {ty:#x}: its parameter holds pointers and cannot be forwarded yet"
        ));
        return Err(CKR_MECHANISM_PARAM_INVALID);
    } else {
        MechParam::Bytes(bytes(m.pParameter as *const u8, m.ulParameterLen)?.to_vec())
    };
    Ok(Mechanism {
        ty: wire(ty),
        param,
    })
}

/// Reads the mechanism of a `C_Message*Init` (v3.0 §5.9 to §5.16): its parameter is the
/// message-based structure of the mechanism (for CKM_AES_GCM a `CK_GCM_MESSAGE_PARAMS`, the
/// size of a `CK_GCM_PARAMS` but not its layout), read as the function gives it.
///
/// # Safety
/// As [`read`].
pub unsafe fn read_message_init(p: *const CK_MECHANISM) -> Rv<Mechanism> {
    let Some(m) = p.as_ref() else {
        return Ok(absent());
    };
    Ok(Mechanism {
        ty: wire(m.mechanism),
        param: match crate::message::read(m.mechanism, m.pParameter, m.ulParameterLen)? {
            MsgParam::None => MechParam::None,
            other => MechParam::Message(other),
        },
    })
}

/// `CK_RSA_PKCS_OAEP_PARAMS`, with the label it points to.
unsafe fn oaep(p: CK_RSA_PKCS_OAEP_PARAMS) -> Rv<MechParam> {
    Ok(MechParam::RsaPkcsOaep {
        hash_alg: wire(p.hashAlg),
        mgf: wire(p.mgf),
        source: wire(p.source),
        source_data: param_bytes(p.pSourceData as *const u8, p.ulSourceDataLen)?,
    })
}

/// A signature context string (v3.2 Mechanisms, ML-DSA): NULL travels as NULL with its length,
/// for the vendor to answer; a length no frame carries is a parameter error.
unsafe fn context(p: *const u8, n: CK_ULONG) -> Rv<protocol::shape::Bytes> {
    crate::ffi::input(p, n).map_err(|_| CKR_MECHANISM_PARAM_INVALID)
}

/// Bytes a parameter structure points to; a bad pointer/length pair is a parameter error.
unsafe fn param_bytes(p: *const u8, n: CK_ULONG) -> Rv<Vec<u8>> {
    bytes(p, n)
        .map(<[u8]>::to_vec)
        .map_err(|_| CKR_MECHANISM_PARAM_INVALID)
}
