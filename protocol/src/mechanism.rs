//! Mechanisms and their parameters (PKCS#11 v2.40 §5.11 "CK_MECHANISM", Current Mechanisms
//! Specification v2.40 for each parameter structure).
//!
//! Parameters that hold pointers travel as owned, typed values; each side builds its own C
//! structure. A parameter structure without pointers that is not in this catalogue travels as
//! [`MechParam::Bytes`], unchanged: that is only meaningful between machines of the same ABI
//! (width, endianness, padding), which is the case for a proxy and its clients on x86_64 Linux.
//! A mechanism known to carry pointers but not yet catalogued is refused by the shim with
//! `CKR_MECHANISM_PARAM_INVALID`, never sent as bytes.

use serde::{Deserialize, Serialize};

/// A `CK_MECHANISM`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mechanism {
    pub ty: u64,
    pub param: MechParam,
}

impl Mechanism {
    /// The mechanism the caller gave, or `None` for a NULL `pMechanism`.
    pub fn given(&self) -> Option<&Mechanism> {
        (!matches!(self.param, MechParam::Absent)).then_some(self)
    }
}

/// The parameter of a mechanism.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MechParam {
    /// `pParameter == NULL`, `ulParameterLen == 0`.
    None,
    /// A byte string (an IV for CBC/ECB-less modes, an optional AES key wrap IV) or a parameter
    /// structure without pointers, forwarded as it is.
    Bytes(Vec<u8>),
    /// A single `CK_ULONG` (`CK_MAC_GENERAL_PARAMS` of `*_HMAC_GENERAL`, `CKM_AES_MAC_GENERAL`).
    Ulong(u64),
    /// `CK_RSA_PKCS_OAEP_PARAMS` (v2.40 Mechanisms §2.1.8).
    RsaPkcsOaep {
        hash_alg: u64,
        mgf: u64,
        source: u64,
        source_data: Vec<u8>,
    },
    /// `CK_RSA_PKCS_PSS_PARAMS` (v2.40 Mechanisms §2.1.13).
    RsaPkcsPss {
        hash_alg: u64,
        mgf: u64,
        salt_len: u64,
    },
    /// `CK_ECDH1_DERIVE_PARAMS` (v2.40 Mechanisms §2.3.16).
    Ecdh1Derive {
        kdf: u64,
        shared_data: Vec<u8>,
        public_data: Vec<u8>,
    },
    /// `CK_AES_CTR_PARAMS` (v2.40 Mechanisms §2.8.4).
    AesCtr { counter_bits: u64, cb: [u8; 16] },
    /// `CK_GCM_PARAMS` (v2.40 Mechanisms §2.12.3). `iv_bits` is `Some` for the v2.40 header's
    /// layout (with `ulIvBits`) and `None` for the original layout without it; the caller's
    /// layout is reproduced unchanged for the vendor library.
    Gcm {
        iv: Vec<u8>,
        iv_bits: Option<u64>,
        aad: Vec<u8>,
        tag_bits: u64,
    },
    /// `CK_CCM_PARAMS` (v2.40 Mechanisms §2.11.3).
    Ccm {
        data_len: u64,
        nonce: Vec<u8>,
        aad: Vec<u8>,
        mac_len: u64,
    },
    /// `CK_KEY_DERIVATION_STRING_DATA` (v2.40 Mechanisms §2.37.2): CONCATENATE_BASE_AND_DATA,
    /// CONCATENATE_DATA_AND_BASE, XOR_BASE_AND_DATA and the `*_ECB_ENCRYPT_DATA` derivations.
    KeyDerivationString(Vec<u8>),
    /// `CK_AES_CBC_ENCRYPT_DATA_PARAMS` (v2.40 Mechanisms §2.10.3).
    AesCbcEncryptData { iv: [u8; 16], data: Vec<u8> },
    /// `CK_DES_CBC_ENCRYPT_DATA_PARAMS` (v2.40 Mechanisms §2.10.3), DES and DES3.
    DesCbcEncryptData { iv: [u8; 8], data: Vec<u8> },
    /// `CK_RSA_AES_KEY_WRAP_PARAMS` (v2.40 Mechanisms §2.1.21): the AES key size and the
    /// OAEP parameters it points to (`None` for a NULL `pOAEPParams`).
    RsaAesKeyWrap {
        aes_key_bits: u64,
        oaep: Option<Box<MechParam>>,
    },
    /// `CK_EDDSA_PARAMS` (v3.0 Mechanisms §2.3.14).
    Eddsa { prehash: bool, context: Vec<u8> },
    /// The parameter of a `C_Message*Init` (v3.0 §5.9 to §5.16): the structure of the
    /// message-based functions (`CK_GCM_MESSAGE_PARAMS` for CKM_AES_GCM...), which has the
    /// size of the single-part one but another layout: read as the function gives it.
    Message(MsgParam),
    /// `pParameter == NULL` with this nonzero `ulParameterLen`: the vendor answers it.
    Null(u64),
    /// `pMechanism` itself was NULL (the type means nothing): the vendor gets NULL and
    /// answers it (most answer CKR_ARGUMENTS_BAD; the vendor decides). Last, so that older
    /// peers' encodings are unchanged.
    Absent,
    /// `CK_SIGN_ADDITIONAL_CONTEXT` (`hash` is `None`: CKM_ML_DSA, CKM_SLH_DSA and their
    /// `CKM_HASH_*_SHA*` forms) or `CK_HASH_SIGN_ADDITIONAL_CONTEXT` (`hash` is the pre-hash
    /// mechanism: CKM_HASH_ML_DSA, CKM_HASH_SLH_DSA), PKCS#11 v3.2 Mechanisms (ML-DSA,
    /// SLH-DSA): the hedging variant and the context string, NULL or given as the caller gave
    /// it.
    SignContext {
        hedge: u64,
        context: crate::shape::Bytes,
        hash: Option<u64>,
    },
}

/// The per-message parameter of the PKCS#11 v3.0 message-based functions (v3.0 §5.9 to
/// §5.16). Fields the token writes (a generated IV or nonce, the tag or MAC) travel back in
/// the response so the shim copies them into the caller's buffers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MsgParam {
    /// `pParameter == NULL`.
    None,
    /// A parameter without pointers, forwarded as it is (same rule as [`MechParam::Bytes`]).
    Bytes(Vec<u8>),
    /// `CK_GCM_MESSAGE_PARAMS` (v3.0 Mechanisms §2.12.4); `tag` has `ceil(tag_bits / 8)` bytes.
    Gcm {
        iv: Vec<u8>,
        iv_fixed_bits: u64,
        iv_generator: u64,
        tag: Vec<u8>,
        tag_bits: u64,
    },
    /// `CK_CCM_MESSAGE_PARAMS` (v3.0 Mechanisms §2.12.5).
    Ccm {
        data_len: u64,
        nonce: Vec<u8>,
        nonce_fixed_bits: u64,
        nonce_generator: u64,
        mac: Vec<u8>,
    },
    /// `CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS` (v3.0 Mechanisms §2.44.4); a 16-byte tag.
    ChaCha20Poly1305 { nonce: Vec<u8>, tag: Vec<u8> },
}
