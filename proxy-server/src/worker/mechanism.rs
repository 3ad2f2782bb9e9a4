//! Builds vendor-side `CK_MECHANISM`s from wire mechanisms (PKCS#11 v2.40 §3.6 CK_MECHANISM;
//! parameter structures from the Current Mechanisms Specification v2.40).

use std::ffi::c_void;
use std::mem::size_of;
use std::ptr;

use cryptoki_sys::*;
use protocol::c_layout::GcmParamsNoIvBits;
use protocol::mechanism::{MechParam, Mechanism, MsgParam};

use super::ulong::{to_ulong, wire};

/// The parameter structure and the buffers its pointers refer to (held, never read: they keep
/// the pointers valid).
#[allow(dead_code)]
enum Param {
    None,
    /// The caller's NULL `pParameter` with its nonzero length.
    Null(usize),
    Bytes(Vec<u8>),
    Ulong(Box<CK_ULONG>),
    Oaep(Box<CK_RSA_PKCS_OAEP_PARAMS>, Vec<u8>),
    Pss(Box<CK_RSA_PKCS_PSS_PARAMS>),
    Ecdh(Box<CK_ECDH1_DERIVE_PARAMS>, Vec<u8>, Vec<u8>),
    Ctr(Box<CK_AES_CTR_PARAMS>),
    Gcm(Box<CK_GCM_PARAMS>, Vec<u8>, Vec<u8>),
    GcmNoIvBits(Box<GcmParamsNoIvBits>, Vec<u8>, Vec<u8>),
    Ccm(Box<CK_CCM_PARAMS>, Vec<u8>, Vec<u8>),
    DerivationString(Box<CK_KEY_DERIVATION_STRING_DATA>, Vec<u8>),
    AesCbcEncryptData(Box<CK_AES_CBC_ENCRYPT_DATA_PARAMS>, Vec<u8>),
    DesCbcEncryptData(Box<CK_DES_CBC_ENCRYPT_DATA_PARAMS>, Vec<u8>),
    Eddsa(Box<CK_EDDSA_PARAMS>, Vec<u8>),
    RsaAesKeyWrap(Box<CK_RSA_AES_KEY_WRAP_PARAMS>, Option<Box<Param>>),
    SignContext(Box<CK_SIGN_ADDITIONAL_CONTEXT>, Vec<u8>),
    HashSignContext(Box<CK_HASH_SIGN_ADDITIONAL_CONTEXT>, Vec<u8>),
    /// A `C_Message*Init` parameter, in the message-based structure.
    Message(CMsgParam),
}

/// A C mechanism owning its parameter.
pub struct CMechanism {
    mech: CK_MECHANISM,
    _param: Param,
    /// The caller's `pMechanism` was NULL: the vendor gets NULL.
    absent: bool,
}

fn ptr_len(b: &mut [u8]) -> Result<(*mut u8, CK_ULONG), CK_RV> {
    let p = if b.is_empty() {
        ptr::null_mut()
    } else {
        b.as_mut_ptr()
    };
    Ok((
        p,
        CK_ULONG::try_from(b.len()).map_err(|_| CKR_MECHANISM_PARAM_INVALID)?,
    ))
}

fn boxed<T>(b: &mut Box<T>) -> (*mut c_void, usize) {
    ((&mut **b as *mut T).cast(), size_of::<T>())
}

impl CMechanism {
    pub fn from_wire(m: &Mechanism) -> Result<Self, CK_RV> {
        let mut param = Param::from_wire(&m.param)?;
        let (p, len) = param.ptr_len();
        Ok(Self {
            mech: CK_MECHANISM {
                mechanism: to_ulong(m.ty)?,
                pParameter: p,
                ulParameterLen: CK_ULONG::try_from(len).map_err(|_| CKR_MECHANISM_PARAM_INVALID)?,
            },
            _param: param,
            absent: matches!(m.param, MechParam::Absent),
        })
    }

    pub fn as_mut_ptr(&mut self) -> *mut CK_MECHANISM {
        if self.absent {
            return ptr::null_mut();
        }
        &mut self.mech
    }
}

impl Param {
    fn from_wire(param: &MechParam) -> Result<Self, CK_RV> {
        Ok(match param {
            MechParam::None | MechParam::Absent => Param::None,
            MechParam::Null(n) => {
                Param::Null(usize::try_from(*n).map_err(|_| CKR_MECHANISM_PARAM_INVALID)?)
            }
            MechParam::Bytes(b) => Param::Bytes(b.clone()),
            MechParam::Ulong(v) => Param::Ulong(Box::new(to_ulong(*v)?)),
            MechParam::RsaPkcsOaep {
                hash_alg,
                mgf,
                source,
                source_data,
            } => Param::oaep(*hash_alg, *mgf, *source, source_data)?,
            MechParam::RsaPkcsPss {
                hash_alg,
                mgf,
                salt_len,
            } => Param::Pss(Box::new(CK_RSA_PKCS_PSS_PARAMS {
                hashAlg: to_ulong(*hash_alg)?,
                mgf: to_ulong(*mgf)?,
                sLen: to_ulong(*salt_len)?,
            })),
            MechParam::Ecdh1Derive {
                kdf,
                shared_data,
                public_data,
            } => Param::ecdh(*kdf, shared_data, public_data)?,
            MechParam::AesCtr { counter_bits, cb } => Param::Ctr(Box::new(CK_AES_CTR_PARAMS {
                ulCounterBits: to_ulong(*counter_bits)?,
                cb: *cb,
            })),
            MechParam::Gcm {
                iv,
                iv_bits,
                aad,
                tag_bits,
            } => Param::gcm(iv, *iv_bits, aad, *tag_bits)?,
            MechParam::Ccm {
                data_len,
                nonce,
                aad,
                mac_len,
            } => Param::ccm(*data_len, nonce, aad, *mac_len)?,
            MechParam::KeyDerivationString(data) => {
                let mut data = data.clone();
                let (p, n) = ptr_len(&mut data)?;
                Param::DerivationString(
                    Box::new(CK_KEY_DERIVATION_STRING_DATA { pData: p, ulLen: n }),
                    data,
                )
            }
            MechParam::AesCbcEncryptData { iv, data } => {
                let mut data = data.clone();
                let (p, n) = ptr_len(&mut data)?;
                Param::AesCbcEncryptData(
                    Box::new(CK_AES_CBC_ENCRYPT_DATA_PARAMS {
                        iv: *iv,
                        pData: p,
                        length: n,
                    }),
                    data,
                )
            }
            MechParam::DesCbcEncryptData { iv, data } => {
                let mut data = data.clone();
                let (p, n) = ptr_len(&mut data)?;
                Param::DesCbcEncryptData(
                    Box::new(CK_DES_CBC_ENCRYPT_DATA_PARAMS {
                        iv: *iv,
                        pData: p,
                        length: n,
                    }),
                    data,
                )
            }
            MechParam::Eddsa { prehash, context } => {
                let mut context = context.clone();
                let (p, n) = ptr_len(&mut context)?;
                Param::Eddsa(
                    Box::new(CK_EDDSA_PARAMS {
                        phFlag: CK_BBOOL::from(*prehash),
                        ulContextDataLen: n,
                        pContextData: p,
                    }),
                    context,
                )
            }
            MechParam::Message(p) => Param::Message(CMsgParam::from_wire(p)?),
            MechParam::RsaAesKeyWrap { aes_key_bits, oaep } => {
                Param::rsa_aes_key_wrap(*aes_key_bits, oaep.as_deref())?
            }
            MechParam::SignContext {
                hedge,
                context,
                hash,
            } => Param::sign_context(*hedge, context, *hash)?,
        })
    }

    /// CK_SIGN_ADDITIONAL_CONTEXT, or CK_HASH_SIGN_ADDITIONAL_CONTEXT with its pre-hash
    /// mechanism (PKCS#11 v3.2 Mechanisms, ML-DSA and SLH-DSA): the context NULL or given as
    /// the caller gave it.
    fn sign_context(
        hedge: u64,
        context: &protocol::shape::Bytes,
        hash: Option<u64>,
    ) -> Result<Self, CK_RV> {
        let (mut bytes, null_len) = match context {
            protocol::shape::Array::Null(n) => (Vec::new(), Some(to_ulong(*n)?)),
            protocol::shape::Array::Given(v) => (v.clone(), None),
        };
        let (p, n) = match null_len {
            Some(n) => (ptr::null_mut(), n),
            None => ptr_len(&mut bytes)?,
        };
        let hedge = to_ulong(hedge)?;
        Ok(match hash {
            None => Param::SignContext(
                Box::new(CK_SIGN_ADDITIONAL_CONTEXT {
                    hedgeVariant: hedge,
                    pContext: p,
                    ulContextLen: n,
                }),
                bytes,
            ),
            Some(hash) => Param::HashSignContext(
                Box::new(CK_HASH_SIGN_ADDITIONAL_CONTEXT {
                    hedgeVariant: hedge,
                    pContext: p,
                    ulContextLen: n,
                    hash: to_ulong(hash)?,
                }),
                bytes,
            ),
        })
    }

    /// CK_RSA_PKCS_OAEP_PARAMS (v2.40 Current Mechanisms, PKCS #1 RSA OAEP).
    fn oaep(hash_alg: u64, mgf: u64, source: u64, source_data: &[u8]) -> Result<Self, CK_RV> {
        let mut data = source_data.to_vec();
        let (p, n) = ptr_len(&mut data)?;
        let params = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: to_ulong(hash_alg)?,
            mgf: to_ulong(mgf)?,
            source: to_ulong(source)?,
            pSourceData: p.cast(),
            ulSourceDataLen: n,
        };
        Ok(Param::Oaep(Box::new(params), data))
    }

    /// CK_ECDH1_DERIVE_PARAMS (v2.40 Current Mechanisms, elliptic curve key derivation).
    fn ecdh(kdf: u64, shared_data: &[u8], public_data: &[u8]) -> Result<Self, CK_RV> {
        let (mut shared, mut public) = (shared_data.to_vec(), public_data.to_vec());
        let (sp, sn) = ptr_len(&mut shared)?;
        let (pp, pn) = ptr_len(&mut public)?;
        let params = CK_ECDH1_DERIVE_PARAMS {
            kdf: to_ulong(kdf)?,
            ulSharedDataLen: sn,
            pSharedData: sp,
            ulPublicDataLen: pn,
            pPublicData: pp,
        };
        Ok(Param::Ecdh(Box::new(params), shared, public))
    }

    /// CK_GCM_PARAMS (v2.40 Current Mechanisms, AES-GCM), with or without its `ulIvBits` field
    /// ([`GcmParamsNoIvBits`]).
    fn gcm(iv: &[u8], iv_bits: Option<u64>, aad: &[u8], tag_bits: u64) -> Result<Self, CK_RV> {
        let (mut iv, mut aad) = (iv.to_vec(), aad.to_vec());
        let (ip, il) = ptr_len(&mut iv)?;
        let (ap, al) = ptr_len(&mut aad)?;
        Ok(match iv_bits {
            Some(bits) => {
                let params = CK_GCM_PARAMS {
                    pIv: ip,
                    ulIvLen: il,
                    ulIvBits: to_ulong(bits)?,
                    pAAD: ap,
                    ulAADLen: al,
                    ulTagBits: to_ulong(tag_bits)?,
                };
                Param::Gcm(Box::new(params), iv, aad)
            }
            None => {
                let params = GcmParamsNoIvBits {
                    p_iv: ip,
                    ul_iv_len: il,
                    p_aad: ap,
                    ul_aad_len: al,
                    ul_tag_bits: to_ulong(tag_bits)?,
                };
                Param::GcmNoIvBits(Box::new(params), iv, aad)
            }
        })
    }

    /// CK_CCM_PARAMS (v2.40 Current Mechanisms, AES-CCM).
    fn ccm(data_len: u64, nonce: &[u8], aad: &[u8], mac_len: u64) -> Result<Self, CK_RV> {
        let (mut nonce, mut aad) = (nonce.to_vec(), aad.to_vec());
        let (np, nl) = ptr_len(&mut nonce)?;
        let (ap, al) = ptr_len(&mut aad)?;
        let params = CK_CCM_PARAMS {
            ulDataLen: to_ulong(data_len)?,
            pNonce: np,
            ulNonceLen: nl,
            pAAD: ap,
            ulAADLen: al,
            ulMACLen: to_ulong(mac_len)?,
        };
        Ok(Param::Ccm(Box::new(params), nonce, aad))
    }

    /// CK_RSA_AES_KEY_WRAP_PARAMS (v2.40 Current Mechanisms, RSA AES key wrap), its OAEP
    /// parameters inside.
    fn rsa_aes_key_wrap(aes_key_bits: u64, oaep: Option<&MechParam>) -> Result<Self, CK_RV> {
        let mut inner = match oaep {
            None => None,
            Some(o @ MechParam::RsaPkcsOaep { .. }) => Some(Box::new(Param::from_wire(o)?)),
            Some(_) => return Err(CKR_MECHANISM_PARAM_INVALID),
        };
        let oaep_ptr = inner
            .as_mut()
            .map_or(ptr::null_mut(), |p| p.ptr_len().0.cast());
        let params = CK_RSA_AES_KEY_WRAP_PARAMS {
            ulAESKeyBits: to_ulong(aes_key_bits)?,
            pOAEPParams: oaep_ptr,
        };
        Ok(Param::RsaAesKeyWrap(Box::new(params), inner))
    }

    /// `pParameter` and its length.
    fn ptr_len(&mut self) -> (*mut c_void, usize) {
        match self {
            Param::None => (ptr::null_mut(), 0),
            Param::Null(n) => (ptr::null_mut(), *n),
            Param::Bytes(b) if b.is_empty() => (ptr::null_mut(), 0),
            Param::Bytes(b) => (b.as_mut_ptr().cast(), b.len()),
            Param::Ulong(b) => boxed(b),
            Param::Oaep(b, _) => boxed(b),
            Param::Pss(b) => boxed(b),
            Param::Ecdh(b, _, _) => boxed(b),
            Param::Ctr(b) => boxed(b),
            Param::Gcm(b, _, _) => boxed(b),
            Param::GcmNoIvBits(b, _, _) => boxed(b),
            Param::Ccm(b, _, _) => boxed(b),
            Param::DerivationString(b, _) => boxed(b),
            Param::AesCbcEncryptData(b, _) => boxed(b),
            Param::DesCbcEncryptData(b, _) => boxed(b),
            Param::Eddsa(b, _) => boxed(b),
            Param::RsaAesKeyWrap(b, _) => boxed(b),
            Param::SignContext(b, _) => boxed(b),
            Param::HashSignContext(b, _) => boxed(b),
            Param::Message(m) => {
                let (p, n) = m.ptr_len();
                (p, n as usize)
            }
        }
    }
}

/// The storage behind a message parameter's pointers. The token may write into the IV/nonce
/// and tag/MAC buffers; [`CMsgParam::to_wire`] reads them back.
#[allow(dead_code)]
enum MsgStorage {
    None,
    Bytes(Vec<u8>),
    Gcm(Box<CK_GCM_MESSAGE_PARAMS>, Vec<u8>, Vec<u8>),
    Ccm(Box<CK_CCM_MESSAGE_PARAMS>, Vec<u8>, Vec<u8>),
    ChaCha(
        Box<CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS>,
        Vec<u8>,
        Vec<u8>,
    ),
}

/// A C message parameter (`pParameter`, `ulParameterLen` of the v3.0 message functions)
/// owning its buffers.
pub struct CMsgParam {
    storage: MsgStorage,
}

/// Length of a Poly1305 tag (v3.0 Mechanisms §2.44.4: `pTag` points to 16 bytes).
const TAG_POLY1305: usize = 16;

impl CMsgParam {
    pub fn from_wire(p: &MsgParam) -> Result<Self, CK_RV> {
        let storage = match p {
            MsgParam::None => MsgStorage::None,
            MsgParam::Bytes(b) => MsgStorage::Bytes(b.clone()),
            MsgParam::Gcm {
                iv,
                iv_fixed_bits,
                iv_generator,
                tag,
                tag_bits,
            } => {
                let (mut iv, mut tag) = (iv.clone(), tag.clone());
                let (ip, il) = ptr_len(&mut iv)?;
                let (tp, _) = ptr_len(&mut tag)?;
                MsgStorage::Gcm(
                    Box::new(CK_GCM_MESSAGE_PARAMS {
                        pIv: ip,
                        ulIvLen: il,
                        ulIvFixedBits: to_ulong(*iv_fixed_bits)?,
                        ivGenerator: to_ulong(*iv_generator)?,
                        pTag: tp,
                        ulTagBits: to_ulong(*tag_bits)?,
                    }),
                    iv,
                    tag,
                )
            }
            MsgParam::Ccm {
                data_len,
                nonce,
                nonce_fixed_bits,
                nonce_generator,
                mac,
            } => {
                let (mut nonce, mut mac) = (nonce.clone(), mac.clone());
                let (np, nl) = ptr_len(&mut nonce)?;
                let (mp, ml) = ptr_len(&mut mac)?;
                MsgStorage::Ccm(
                    Box::new(CK_CCM_MESSAGE_PARAMS {
                        ulDataLen: to_ulong(*data_len)?,
                        pNonce: np,
                        ulNonceLen: nl,
                        ulNonceFixedBits: to_ulong(*nonce_fixed_bits)?,
                        nonceGenerator: to_ulong(*nonce_generator)?,
                        pMAC: mp,
                        ulMACLen: ml,
                    }),
                    nonce,
                    mac,
                )
            }
            MsgParam::ChaCha20Poly1305 { nonce, tag } => {
                if tag.len() != TAG_POLY1305 {
                    return Err(CKR_MECHANISM_PARAM_INVALID);
                }
                let (mut nonce, mut tag) = (nonce.clone(), tag.clone());
                let (np, nl) = ptr_len(&mut nonce)?;
                let (tp, _) = ptr_len(&mut tag)?;
                MsgStorage::ChaCha(
                    Box::new(CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS {
                        pNonce: np,
                        ulNonceLen: nl,
                        pTag: tp,
                    }),
                    nonce,
                    tag,
                )
            }
        };
        Ok(Self { storage })
    }

    /// `pParameter` and `ulParameterLen` for the vendor call.
    pub fn ptr_len(&mut self) -> (*mut c_void, CK_ULONG) {
        let (p, n) = match &mut self.storage {
            MsgStorage::None => (ptr::null_mut(), 0),
            MsgStorage::Bytes(b) if b.is_empty() => (ptr::null_mut(), 0),
            MsgStorage::Bytes(b) => (b.as_mut_ptr().cast(), b.len()),
            MsgStorage::Gcm(b, _, _) => boxed(b),
            MsgStorage::Ccm(b, _, _) => boxed(b),
            MsgStorage::ChaCha(b, _, _) => boxed(b),
        };
        (p, n as CK_ULONG)
    }

    /// The parameter as the token left it (IV/nonce it generated, tag/MAC it computed).
    pub fn to_wire(&self) -> MsgParam {
        match &self.storage {
            MsgStorage::None => MsgParam::None,
            MsgStorage::Bytes(b) => MsgParam::Bytes(b.clone()),
            MsgStorage::Gcm(p, iv, tag) => MsgParam::Gcm {
                iv: iv.clone(),
                iv_fixed_bits: wire(p.ulIvFixedBits),
                iv_generator: wire(p.ivGenerator),
                tag: tag.clone(),
                tag_bits: wire(p.ulTagBits),
            },
            MsgStorage::Ccm(p, nonce, mac) => MsgParam::Ccm {
                data_len: wire(p.ulDataLen),
                nonce: nonce.clone(),
                nonce_fixed_bits: wire(p.ulNonceFixedBits),
                nonce_generator: wire(p.nonceGenerator),
                mac: mac.clone(),
            },
            MsgStorage::ChaCha(_, nonce, tag) => MsgParam::ChaCha20Poly1305 {
                nonce: nonce.clone(),
                tag: tag.clone(),
            },
        }
    }
}
