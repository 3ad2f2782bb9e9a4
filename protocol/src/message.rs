//! One [`Request`] variant per PKCS#11 function, and the [`Response`] shapes they answer with.
//!
//! Handles, slot ids, flags, lengths and return values are `u64` (a `CK_ULONG` in C).
//! Pointer arguments keep their shape ([`crate::shape`]): inputs say NULL or given, a
//! `capacity` says whether the caller gave a buffer and what its length pointer holds, and
//! `outputs` which single output pointers it gave. The server calls the vendor library with
//! the same shapes and sends back its return value, the length it wrote and the data, so the
//! vendor's argument checks and the two-call convention (PKCS#11 v2.40 §5.2) are its own.
//!
//! Responses: any call that failed and has nothing more to say answers [`Response::Rv`]; a
//! successful call answers the variant of its shape. The shapes that carry data with an error
//! return value are [`Response::Output`], [`Response::Ulongs`] (`CKR_BUFFER_TOO_SMALL` with the
//! length) and [`Response::Attributes`] (per-attribute results, PKCS#11 v2.40 §5.7).

use serde::{Deserialize, Serialize};

use crate::attribute::{AttrOut, AttrQuery, Attribute};
use crate::mechanism::{Mechanism, MsgParam};
use crate::shape::{Array, Bytes, Out, Outputs};

/// A PIN; `None` is a NULL `pPin` (protected authentication path).
pub type Pin = Option<SecretBytes>;

/// Bytes wiped from memory when dropped (PINs), and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretBytes(zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes(<{} bytes>)", self.0.len())
    }
}

impl std::ops::Deref for SecretBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        Self(zeroize::Zeroizing::new(v))
    }
}

impl Request {
    /// Whether asking again changes nothing the first ask could have changed: a request whose
    /// answer was lost with its connection may then be sent again on another one.
    pub fn is_repeatable(&self) -> bool {
        matches!(
            self,
            Request::GetInfo { .. }
                | Request::GetSlotList { .. }
                | Request::GetSlotInfo { .. }
                | Request::GetTokenInfo { .. }
                | Request::GetMechanismList { .. }
                | Request::GetMechanismInfo { .. }
                | Request::GetSessionInfo { .. }
                | Request::GetAttributeValue { .. }
                | Request::GetObjectSize { .. }
                | Request::GenerateRandom { .. }
        )
    }

    /// Whether this request may have changed the token (objects, PINs, the token itself): a
    /// request whose answer was lost is then never sent again, even to a new server, since the
    /// first one may have done its work before the server went away. Everything else only
    /// touches state the lost server held (sessions, logins, operations) or reads.
    pub fn changes_token(&self) -> bool {
        matches!(
            self,
            Request::InitToken { .. }
                | Request::InitPin { .. }
                | Request::SetPin { .. }
                | Request::CreateObject { .. }
                | Request::CopyObject { .. }
                | Request::DestroyObject { .. }
                | Request::SetAttributeValue { .. }
                | Request::GenerateKey { .. }
                | Request::GenerateKeyPair { .. }
                | Request::UnwrapKey { .. }
                | Request::DeriveKey { .. }
        )
    }

    /// The session handle this request names, if any.
    pub fn session_mut(&mut self) -> Option<&mut u64> {
        use Request::*;
        match self {
            Initialize { .. }
            | Finalize
            | GetInfo { .. }
            | GetSlotList { .. }
            | GetSlotInfo { .. }
            | GetTokenInfo { .. }
            | WaitForSlotEvent { .. }
            | GetMechanismList { .. }
            | GetMechanismInfo { .. }
            | InitToken { .. }
            | OpenSession { .. }
            | CloseAllSessions { .. } => None,
            GetFunctionStatus { session }
            | CancelFunction { session }
            | InitPin { session, .. }
            | SetPin { session, .. }
            | CloseSession { session }
            | GetSessionInfo { session, .. }
            | GetOperationState { session, .. }
            | SetOperationState { session, .. }
            | Login { session, .. }
            | Logout { session }
            | CreateObject { session, .. }
            | CopyObject { session, .. }
            | DestroyObject { session, .. }
            | GetObjectSize { session, .. }
            | GetAttributeValue { session, .. }
            | SetAttributeValue { session, .. }
            | FindObjectsInit { session, .. }
            | FindObjects { session, .. }
            | FindObjectsFinal { session }
            | EncryptInit { session, .. }
            | Encrypt { session, .. }
            | EncryptUpdate { session, .. }
            | EncryptFinal { session, .. }
            | DecryptInit { session, .. }
            | Decrypt { session, .. }
            | DecryptUpdate { session, .. }
            | DecryptFinal { session, .. }
            | DigestInit { session, .. }
            | Digest { session, .. }
            | DigestUpdate { session, .. }
            | DigestKey { session, .. }
            | DigestFinal { session, .. }
            | SignInit { session, .. }
            | Sign { session, .. }
            | SignUpdate { session, .. }
            | SignFinal { session, .. }
            | SignRecoverInit { session, .. }
            | SignRecover { session, .. }
            | VerifyInit { session, .. }
            | Verify { session, .. }
            | VerifyUpdate { session, .. }
            | VerifyFinal { session, .. }
            | VerifyRecoverInit { session, .. }
            | VerifyRecover { session, .. }
            | DigestEncryptUpdate { session, .. }
            | DecryptDigestUpdate { session, .. }
            | SignEncryptUpdate { session, .. }
            | DecryptVerifyUpdate { session, .. }
            | GenerateKey { session, .. }
            | GenerateKeyPair { session, .. }
            | WrapKey { session, .. }
            | UnwrapKey { session, .. }
            | DeriveKey { session, .. }
            | SeedRandom { session, .. }
            | GenerateRandom { session, .. }
            | LoginUser { session, .. }
            | SessionCancel { session, .. }
            | MessageEncryptInit { session, .. }
            | EncryptMessage { session, .. }
            | EncryptMessageBegin { session, .. }
            | EncryptMessageNext { session, .. }
            | MessageEncryptFinal { session }
            | MessageDecryptInit { session, .. }
            | DecryptMessage { session, .. }
            | DecryptMessageBegin { session, .. }
            | DecryptMessageNext { session, .. }
            | MessageDecryptFinal { session }
            | MessageSignInit { session, .. }
            | SignMessage { session, .. }
            | SignMessageBegin { session, .. }
            | SignMessageNext { session, .. }
            | MessageSignFinal { session }
            | MessageVerifyInit { session, .. }
            | VerifyMessage { session, .. }
            | VerifyMessageBegin { session, .. }
            | VerifyMessageNext { session, .. }
            | MessageVerifyFinal { session }
            | IdentifyObjects { session, .. } => Some(session),
        }
    }

    /// The object handles this request names (at most two: C_WrapKey's keys, C_SetOperationState's
    /// keys). A mechanism parameter that is itself a handle (CKM_CONCATENATE_BASE_AND_KEY)
    /// travels as bytes and is not included.
    pub fn object_handles_mut(&mut self) -> [Option<&mut u64>; 2] {
        use Request::*;
        match self {
            SetOperationState {
                encryption_key,
                authentication_key,
                ..
            } => [Some(encryption_key), Some(authentication_key)],
            WrapKey {
                wrapping_key, key, ..
            } => [Some(wrapping_key), Some(key)],
            CopyObject { object, .. }
            | DestroyObject { object, .. }
            | GetObjectSize { object, .. }
            | GetAttributeValue { object, .. }
            | SetAttributeValue { object, .. } => [Some(object), None],
            EncryptInit { key, .. }
            | DecryptInit { key, .. }
            | DigestKey { key, .. }
            | SignInit { key, .. }
            | SignRecoverInit { key, .. }
            | VerifyInit { key, .. }
            | VerifyRecoverInit { key, .. }
            | MessageEncryptInit { key, .. }
            | MessageDecryptInit { key, .. }
            | MessageSignInit { key, .. }
            | MessageVerifyInit { key, .. } => [Some(key), None],
            UnwrapKey { unwrapping_key, .. } => [Some(unwrapping_key), None],
            DeriveKey { base_key, .. } => [Some(base_key), None],
            _ => [None, None],
        }
    }

    /// Whether this request carries a PIN (its frame is wiped after use).
    pub fn carries_secret(&self) -> bool {
        matches!(
            self,
            Request::Login { .. }
                | Request::LoginUser { .. }
                | Request::InitPin { .. }
                | Request::SetPin { .. }
                | Request::InitToken { .. }
        )
    }
}

/// A request, one variant per PKCS#11 function that crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    // General purpose (v2.40 §5.4). The first C_Initialize travels in the hello; this is a
    // later one (the vendor answers CKR_CRYPTOKI_ALREADY_INITIALIZED, or whatever it checks
    // first). C_Finalize finalises the application's vendor instance.
    Initialize {
        args: Option<crate::handshake::InitArgs>,
    },
    Finalize,
    GetInfo {
        outputs: Outputs,
    },
    GetFunctionStatus {
        session: u64,
    },
    CancelFunction {
        session: u64,
    },
    // Slot and token management (v2.40 §5.5).
    GetSlotList {
        token_present: bool,
        capacity: Out,
    },
    GetSlotInfo {
        slot: u64,
        outputs: Outputs,
    },
    GetTokenInfo {
        slot: u64,
        outputs: Outputs,
    },
    /// `reserved`: whether the caller's `pReserved` was not NULL (it must be NULL: the vendor
    /// answers).
    WaitForSlotEvent {
        flags: u64,
        reserved: bool,
        outputs: Outputs,
    },
    GetMechanismList {
        slot: u64,
        capacity: Out,
    },
    GetMechanismInfo {
        slot: u64,
        mechanism: u64,
        outputs: Outputs,
    },
    InitToken {
        slot: u64,
        so_pin: Pin,
        label: Bytes,
    },
    InitPin {
        session: u64,
        pin: Pin,
    },
    SetPin {
        session: u64,
        old_pin: Pin,
        new_pin: Pin,
    },
    // Session management (v2.40 §5.6).
    OpenSession {
        slot: u64,
        flags: u64,
        outputs: Outputs,
    },
    CloseSession {
        session: u64,
    },
    CloseAllSessions {
        slot: u64,
    },
    GetSessionInfo {
        session: u64,
        outputs: Outputs,
    },
    GetOperationState {
        session: u64,
        capacity: Out,
    },
    SetOperationState {
        session: u64,
        state: Bytes,
        encryption_key: u64,
        authentication_key: u64,
    },
    Login {
        session: u64,
        user_type: u64,
        pin: Pin,
    },
    Logout {
        session: u64,
    },
    // Object management (v2.40 §5.7).
    CreateObject {
        session: u64,
        template: Array<Attribute>,
        outputs: Outputs,
    },
    CopyObject {
        session: u64,
        object: u64,
        template: Array<Attribute>,
        outputs: Outputs,
    },
    DestroyObject {
        session: u64,
        object: u64,
    },
    GetObjectSize {
        session: u64,
        object: u64,
        outputs: Outputs,
    },
    GetAttributeValue {
        session: u64,
        object: u64,
        query: Array<AttrQuery>,
        /// A size query (every attribute's length, none a nested template) the server may
        /// complete: when the vendor answers it CKR_OK, the server makes the real call with a
        /// buffer of each length ([`Response::AttributesCompleted`]), so that the
        /// application's follow-up costs no round trip (DESIGN.md, "Two-call functions").
        complete: bool,
    },
    SetAttributeValue {
        session: u64,
        object: u64,
        template: Array<Attribute>,
    },
    FindObjectsInit {
        session: u64,
        template: Array<Attribute>,
        /// Not 0: once the search started, the server runs C_FindObjects for up to this many
        /// handles at once, and C_FindObjectsFinal if that exhausted the search
        /// ([`Response::Found`]), so that a search costs one round trip.
        prefetch: u64,
    },
    FindObjects {
        session: u64,
        max_count: u64,
        outputs: Outputs,
    },
    FindObjectsFinal {
        session: u64,
    },
    // Encryption (v2.40 §5.8).
    EncryptInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    },
    Encrypt {
        session: u64,
        data: Bytes,
        capacity: Out,
    },
    EncryptUpdate {
        session: u64,
        data: Bytes,
        capacity: Out,
    },
    EncryptFinal {
        session: u64,
        capacity: Out,
    },
    // Decryption (v2.40 §5.9).
    DecryptInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    },
    Decrypt {
        session: u64,
        data: Bytes,
        capacity: Out,
    },
    DecryptUpdate {
        session: u64,
        data: Bytes,
        capacity: Out,
    },
    DecryptFinal {
        session: u64,
        capacity: Out,
    },
    // Message digesting (v2.40 §5.10).
    DigestInit {
        session: u64,
        mechanism: Mechanism,
    },
    Digest {
        session: u64,
        data: Bytes,
        capacity: Out,
    },
    DigestUpdate {
        session: u64,
        data: Bytes,
    },
    DigestKey {
        session: u64,
        key: u64,
    },
    DigestFinal {
        session: u64,
        capacity: Out,
    },
    // Signing and MACing (v2.40 §5.11).
    SignInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    },
    Sign {
        session: u64,
        data: Bytes,
        capacity: Out,
    },
    SignUpdate {
        session: u64,
        data: Bytes,
    },
    SignFinal {
        session: u64,
        capacity: Out,
    },
    SignRecoverInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    },
    SignRecover {
        session: u64,
        data: Bytes,
        capacity: Out,
    },
    // Verifying signatures and MACs (v2.40 §5.12).
    VerifyInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    },
    Verify {
        session: u64,
        data: Bytes,
        signature: Bytes,
    },
    VerifyUpdate {
        session: u64,
        data: Bytes,
    },
    VerifyFinal {
        session: u64,
        signature: Bytes,
    },
    VerifyRecoverInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    },
    VerifyRecover {
        session: u64,
        signature: Bytes,
        capacity: Out,
    },
    // Dual-function cryptographic functions (v2.40 §5.13).
    DigestEncryptUpdate {
        session: u64,
        data: Bytes,
        capacity: Out,
    },
    DecryptDigestUpdate {
        session: u64,
        data: Bytes,
        capacity: Out,
    },
    SignEncryptUpdate {
        session: u64,
        data: Bytes,
        capacity: Out,
    },
    DecryptVerifyUpdate {
        session: u64,
        data: Bytes,
        capacity: Out,
    },
    // Key management (v2.40 §5.14).
    GenerateKey {
        session: u64,
        mechanism: Mechanism,
        template: Array<Attribute>,
        outputs: Outputs,
    },
    GenerateKeyPair {
        session: u64,
        mechanism: Mechanism,
        public_template: Array<Attribute>,
        private_template: Array<Attribute>,
        outputs: Outputs,
    },
    WrapKey {
        session: u64,
        mechanism: Mechanism,
        wrapping_key: u64,
        key: u64,
        capacity: Out,
    },
    UnwrapKey {
        session: u64,
        mechanism: Mechanism,
        unwrapping_key: u64,
        wrapped_key: Bytes,
        template: Array<Attribute>,
        outputs: Outputs,
    },
    DeriveKey {
        session: u64,
        mechanism: Mechanism,
        base_key: u64,
        template: Array<Attribute>,
        outputs: Outputs,
    },
    // Random number generation (v2.40 §5.15).
    SeedRandom {
        session: u64,
        seed: Bytes,
    },
    GenerateRandom {
        session: u64,
        len: u64,
        outputs: Outputs,
    },
    // PKCS#11 v3.0 additions (v3.0 §5.6, §5.9 to §5.16).
    LoginUser {
        session: u64,
        user_type: u64,
        pin: Pin,
        username: Bytes,
    },
    SessionCancel {
        session: u64,
        flags: u64,
    },
    MessageEncryptInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    },
    EncryptMessage {
        session: u64,
        param: MsgParam,
        aad: Bytes,
        data: Bytes,
        capacity: Out,
    },
    EncryptMessageBegin {
        session: u64,
        param: MsgParam,
        aad: Bytes,
    },
    EncryptMessageNext {
        session: u64,
        param: MsgParam,
        data: Bytes,
        capacity: Out,
        flags: u64,
    },
    MessageEncryptFinal {
        session: u64,
    },
    MessageDecryptInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    },
    DecryptMessage {
        session: u64,
        param: MsgParam,
        aad: Bytes,
        data: Bytes,
        capacity: Out,
    },
    DecryptMessageBegin {
        session: u64,
        param: MsgParam,
        aad: Bytes,
    },
    DecryptMessageNext {
        session: u64,
        param: MsgParam,
        data: Bytes,
        capacity: Out,
        flags: u64,
    },
    MessageDecryptFinal {
        session: u64,
    },
    MessageSignInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    },
    SignMessage {
        session: u64,
        param: MsgParam,
        data: Bytes,
        capacity: Out,
    },
    SignMessageBegin {
        session: u64,
        param: MsgParam,
    },
    /// A `capacity` without a length pointer is "not the last part" (v3.0 §5.14.4).
    SignMessageNext {
        session: u64,
        param: MsgParam,
        data: Bytes,
        capacity: Out,
    },
    MessageSignFinal {
        session: u64,
    },
    MessageVerifyInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    },
    VerifyMessage {
        session: u64,
        param: MsgParam,
        data: Bytes,
        signature: Bytes,
    },
    VerifyMessageBegin {
        session: u64,
        param: MsgParam,
    },
    /// `signature` is `None` when the caller's `pSignature` is NULL (not the last part).
    VerifyMessageNext {
        session: u64,
        param: MsgParam,
        data: Bytes,
        signature: Bytes,
    },
    MessageVerifyFinal {
        session: u64,
    },
    /// Not a PKCS#11 function: the identity of objects handed out earlier, for the shim's
    /// recovery, when it did not come with the answer that handed them out (another thread
    /// got it). Answered with [`Response::Identified`] around `CKR_OK`.
    IdentifyObjects {
        session: u64,
        objects: Vec<u64>,
    },
}

impl Request {
    /// The PKCS#11 function this request stands for, for logs.
    pub fn function_name(&self) -> &'static str {
        macro_rules! names {
            ($($v:ident),* $(,)?) => {
                match self {
                    // The specification spells these two with "PIN".
                    Request::InitPin { .. } => "C_InitPIN",
                    Request::SetPin { .. } => "C_SetPIN",
                    // What the server calls on the vendor for it (C_GetAttributeValue's policy
                    // and metrics cover it).
                    Request::IdentifyObjects { .. } => "C_GetAttributeValue",
                    $(Request::$v { .. } => concat!("C_", stringify!($v)),)*
                }
            };
        }
        names!(
            Initialize,
            Finalize,
            GetInfo,
            GetFunctionStatus,
            CancelFunction,
            GetSlotList,
            GetSlotInfo,
            GetTokenInfo,
            WaitForSlotEvent,
            GetMechanismList,
            GetMechanismInfo,
            InitToken,
            OpenSession,
            CloseSession,
            CloseAllSessions,
            GetSessionInfo,
            GetOperationState,
            SetOperationState,
            Login,
            Logout,
            CreateObject,
            CopyObject,
            DestroyObject,
            GetObjectSize,
            GetAttributeValue,
            SetAttributeValue,
            FindObjectsInit,
            FindObjects,
            FindObjectsFinal,
            EncryptInit,
            Encrypt,
            EncryptUpdate,
            EncryptFinal,
            DecryptInit,
            Decrypt,
            DecryptUpdate,
            DecryptFinal,
            DigestInit,
            Digest,
            DigestUpdate,
            DigestKey,
            DigestFinal,
            SignInit,
            Sign,
            SignUpdate,
            SignFinal,
            SignRecoverInit,
            SignRecover,
            VerifyInit,
            Verify,
            VerifyUpdate,
            VerifyFinal,
            VerifyRecoverInit,
            VerifyRecover,
            DigestEncryptUpdate,
            DecryptDigestUpdate,
            SignEncryptUpdate,
            DecryptVerifyUpdate,
            GenerateKey,
            GenerateKeyPair,
            WrapKey,
            UnwrapKey,
            DeriveKey,
            SeedRandom,
            GenerateRandom,
            LoginUser,
            SessionCancel,
            MessageEncryptInit,
            EncryptMessage,
            EncryptMessageBegin,
            EncryptMessageNext,
            MessageEncryptFinal,
            MessageDecryptInit,
            DecryptMessage,
            DecryptMessageBegin,
            DecryptMessageNext,
            MessageDecryptFinal,
            MessageSignInit,
            SignMessage,
            SignMessageBegin,
            SignMessageNext,
            MessageSignFinal,
            MessageVerifyInit,
            VerifyMessage,
            VerifyMessageBegin,
            VerifyMessageNext,
            MessageVerifyFinal,
        )
    }
}

/// A version, `CK_VERSION`.
pub type Version = (u8, u8);

/// `CK_INFO` (v2.40 §3.1). Text fields are the vendor's blank-padded bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub cryptoki_version: Version,
    pub manufacturer_id: Vec<u8>,
    pub flags: u64,
    pub library_description: Vec<u8>,
    pub library_version: Version,
}

/// `CK_SLOT_INFO` (v2.40 §3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub slot_description: Vec<u8>,
    pub manufacturer_id: Vec<u8>,
    pub flags: u64,
    pub hardware_version: Version,
    pub firmware_version: Version,
}

/// `CK_TOKEN_INFO` (v2.40 §3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub label: Vec<u8>,
    pub manufacturer_id: Vec<u8>,
    pub model: Vec<u8>,
    pub serial_number: Vec<u8>,
    pub flags: u64,
    pub max_session_count: u64,
    pub session_count: u64,
    pub max_rw_session_count: u64,
    pub rw_session_count: u64,
    pub max_pin_len: u64,
    pub min_pin_len: u64,
    pub total_public_memory: u64,
    pub free_public_memory: u64,
    pub total_private_memory: u64,
    pub free_private_memory: u64,
    pub hardware_version: Version,
    pub firmware_version: Version,
    pub utc_time: Vec<u8>,
}

/// `CK_SESSION_INFO` (v2.40 §3.3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub slot: u64,
    pub state: u64,
    pub flags: u64,
    pub device_error: u64,
}

/// `CK_MECHANISM_INFO` (v2.40 §3.6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MechanismInfo {
    pub min_key_size: u64,
    pub max_key_size: u64,
    pub flags: u64,
}

/// A response. See the module documentation for which shape answers which request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Only a return value.
    Rv(u64),
    Info(Info),
    SlotInfo(SlotInfo),
    TokenInfo(TokenInfo),
    SessionInfo(SessionInfo),
    MechanismInfo(MechanismInfo),
    /// `CKR_OK` with one handle (session, object, key, or the slot of a slot event).
    Handle(u64),
    /// `CKR_OK` with the two keys of C_GenerateKeyPair.
    KeyPair {
        public_key: u64,
        private_key: u64,
    },
    /// `CKR_OK` with a size (C_GetObjectSize).
    Size(u64),
    /// A list of `CK_ULONG`s (slots, mechanisms, objects) with the vendor's return value and
    /// the count it reported (for size queries and `CKR_BUFFER_TOO_SMALL`).
    Ulongs {
        rv: u64,
        count: u64,
        values: Vec<u64>,
    },
    /// Output bytes with the vendor's return value and the length it reported.
    Output {
        rv: u64,
        len: u64,
        data: Vec<u8>,
    },
    /// A size query sent with [`crate::shape::Out::complete`]: the vendor answered it CKR_OK
    /// with `len`, and then answered the real call that followed (a buffer of `len` bytes)
    /// with `rv`, the length `out_len` and `data`.
    Completed {
        len: u64,
        rv: u64,
        out_len: u64,
        data: Vec<u8>,
    },
    /// C_FindObjectsInit with a prefetch: the vendor started the search (CKR_OK), answered
    /// C_FindObjects for `prefetch` handles with `find_rv` and `objects`, and, when that was
    /// fewer than asked (the search is exhausted), C_FindObjectsFinal with `final_rv`.
    Found {
        objects: Vec<u64>,
        find_rv: u64,
        final_rv: Option<u64>,
    },
    /// An answer that hands out object handles (or the answer to
    /// [`Request::IdentifyObjects`]), with the identity of each object the application's
    /// worker had not identified for it yet (hello flag `identify_objects`).
    Identified {
        identities: Vec<crate::objects::Identity>,
        answer: Box<Response>,
    },
    /// C_GetAttributeValue: the return value and one result per queried attribute.
    Attributes {
        rv: u64,
        values: Vec<AttrOut>,
    },
    /// A C_GetAttributeValue size query sent with `complete`: the vendor answered it CKR_OK
    /// with `lengths` (one [`AttrOut::Len`] per attribute), and then answered the real call
    /// that followed (a buffer of each length) with `rv` and `values`.
    AttributesCompleted {
        lengths: Vec<AttrOut>,
        rv: u64,
        values: Vec<AttrOut>,
    },
    /// A message-based call (v3.0): the return value, the output (as [`Response::Output`];
    /// empty for calls without one) and the parameter as the token left it (generated IV,
    /// tag), to be copied back to the caller.
    Message {
        rv: u64,
        len: u64,
        data: Vec<u8>,
        param: MsgParam,
    },
}

impl Response {
    /// The PKCS#11 return value this response carries.
    pub fn rv(&self) -> u64 {
        match self {
            Response::Rv(rv)
            | Response::Ulongs { rv, .. }
            | Response::Output { rv, .. }
            | Response::Attributes { rv, .. }
            | Response::Message { rv, .. } => *rv,
            Response::Identified { answer, .. } => answer.rv(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::{AttrValue, Want};
    use crate::codec;
    use crate::mechanism::MechParam;

    #[test]
    fn requests_round_trip_through_the_codec() {
        let requests = vec![
            Request::Initialize { args: None },
            Request::GetSlotList {
                token_present: true,
                capacity: Out::query(0),
            },
            Request::SignInit {
                session: 1,
                mechanism: Mechanism {
                    ty: 0x1041,
                    param: MechParam::Gcm {
                        iv: vec![1; 12],
                        iv_bits: None,
                        aad: vec![],
                        tag_bits: 128,
                    },
                },
                key: u64::MAX,
            },
            Request::CreateObject {
                session: 7,
                template: vec![Attribute {
                    ty: crate::attribute::WRAP_TEMPLATE,
                    value: AttrValue::Template(
                        vec![Attribute {
                            ty: 0,
                            value: AttrValue::Ulong(3),
                        }]
                        .into(),
                    ),
                }]
                .into(),
                outputs: Outputs::ALL,
            },
            Request::GetAttributeValue {
                session: 1,
                object: 2,
                query: vec![AttrQuery {
                    ty: 0x11,
                    want: Want::Buffer(64),
                }]
                .into(),
                complete: false,
            },
        ];
        let mut buf = Vec::new();
        for r in requests {
            codec::encode(&r, &mut buf).unwrap();
            assert_eq!(codec::decode::<Request>(&buf).unwrap(), r);
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut buf = Vec::new();
        codec::encode(&Response::Rv(0), &mut buf).unwrap();
        buf.push(0);
        assert!(codec::decode::<Response>(&buf).is_err());
    }

    #[test]
    fn function_names_follow_the_spec() {
        let pin = Request::SetPin {
            session: 1,
            old_pin: None,
            new_pin: None,
        };
        assert_eq!(pin.function_name(), "C_SetPIN");
        assert_eq!(
            Request::InitPin {
                session: 1,
                pin: None
            }
            .function_name(),
            "C_InitPIN"
        );
        assert_eq!(
            Request::GetSlotList {
                token_present: false,
                capacity: Out::query(0)
            }
            .function_name(),
            "C_GetSlotList"
        );
    }
}
