//! The request table: one row per PKCS#11 function that crosses the wire, each a [`Request`]
//! variant with its arguments and its [`Descriptor`] (see [`crate::function`]). A row reads
//! `Variant { arguments } => d(chapter, "C_Name")` followed by what is true of the function.
//!
//! Pointer arguments keep their shape ([`crate::shape`]): inputs say NULL or given, a
//! `capacity` says whether the caller gave a buffer and what its length pointer holds, and
//! `outputs` which single output pointers it gave. The server calls the vendor library with
//! the same shapes, so the vendor's argument checks and the two-call convention (PKCS#11
//! v2.40 §5.2) are its own.

use serde::{Deserialize, Serialize};

use crate::attribute::{AttrQuery, Attribute};
use crate::function::{
    requests, Access::*, Chapter::*, Deadline::*, Descriptor, OpKind as Op, Step,
};
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

/// A row's descriptor: a function of `chapter` called `name` (the builder methods add the rest).
const fn d(chapter: crate::function::Chapter, name: &'static str) -> Descriptor {
    Descriptor::new(chapter, name)
}

requests! {
    // General purpose (v2.40 §5.4). The first C_Initialize travels in the hello; this is a
    // later one (the vendor answers CKR_CRYPTOKI_ALREADY_INITIALIZED, or whatever it checks
    // first). C_Finalize finalises the application's vendor instance.
    Initialize {
        args: Option<crate::handshake::InitArgs>,
    } => d(General, "C_Initialize").access(Signer),
    Finalize {} => d(General, "C_Finalize").changes_view().access(Signer),
    GetInfo {
        outputs: Outputs,
    } => d(General, "C_GetInfo").repeatable().access(Signer),
    GetFunctionStatus {
        session: u64,
    } => d(General, "C_GetFunctionStatus").access(Signer),
    CancelFunction {
        session: u64,
    } => d(General, "C_CancelFunction").access(Signer),
    // Slot and token management (v2.40 §5.5).
    GetSlotList {
        token_present: bool,
        capacity: Out,
    } => d(SlotToken, "C_GetSlotList").repeatable().access(Signer),
    GetSlotInfo {
        slot: u64,
        outputs: Outputs,
    } => d(SlotToken, "C_GetSlotInfo").repeatable().access(Signer),
    GetTokenInfo {
        slot: u64,
        outputs: Outputs,
    } => d(SlotToken, "C_GetTokenInfo").repeatable().access(Signer),
    /// `reserved`: whether the caller's `pReserved` was not NULL (it must be NULL: the vendor
    /// answers).
    WaitForSlotEvent {
        flags: u64,
        reserved: bool,
        outputs: Outputs,
    } => d(SlotToken, "C_WaitForSlotEvent").deadline(Unbounded).access(Signer),
    GetMechanismList {
        slot: u64,
        capacity: Out,
    } => d(SlotToken, "C_GetMechanismList").repeatable().access(Signer),
    GetMechanismInfo {
        slot: u64,
        /// The mechanism type asked about (`mechanism` names a [`Mechanism`] elsewhere).
        mechanism_type: u64,
        outputs: Outputs,
    } => d(SlotToken, "C_GetMechanismInfo").repeatable().access(Signer),
    InitToken {
        slot: u64,
        so_pin: Pin,
        label: Bytes,
    } => d(SlotToken, "C_InitToken").changes_token().carries_pin().deadline(Slow),
    InitPin {
        session: u64,
        pin: Pin,
    } => d(SlotToken, "C_InitPIN").changes_token().carries_pin().deadline(Slow),
    SetPin {
        session: u64,
        old_pin: Pin,
        new_pin: Pin,
    } => d(SlotToken, "C_SetPIN").changes_token().carries_pin().recorded().deadline(Slow),
    // Session management (v2.40 §5.6).
    OpenSession {
        slot: u64,
        flags: u64,
        outputs: Outputs,
    } => d(Session, "C_OpenSession").recorded().access(Signer),
    CloseSession {
        session: u64,
    } => d(Session, "C_CloseSession").recorded().changes_view().access(Signer),
    CloseAllSessions {
        slot: u64,
    } => d(Session, "C_CloseAllSessions").recorded().changes_view().access(Signer),
    GetSessionInfo {
        session: u64,
        outputs: Outputs,
    } => d(Session, "C_GetSessionInfo").repeatable().access(Signer),
    GetOperationState {
        session: u64,
        capacity: Out,
    } => d(Session, "C_GetOperationState"),
    SetOperationState {
        session: u64,
        state: Bytes,
        encryption_key: u64,
        authentication_key: u64,
    } => d(Session, "C_SetOperationState").step(Step::Forget),
    Login {
        session: u64,
        user_type: u64,
        pin: Pin,
    } => d(Session, "C_Login").carries_pin().recorded().changes_view().deadline(Slow).access(Signer),
    Logout {
        session: u64,
    } => d(Session, "C_Logout").recorded().changes_view().access(Signer),
    // Object management (v2.40 §5.7).
    CreateObject {
        session: u64,
        template: Array<Attribute>,
        outputs: Outputs,
    } => d(Object, "C_CreateObject").changes_token().hands_out().access(Enroller),
    CopyObject {
        session: u64,
        object: u64,
        template: Array<Attribute>,
        outputs: Outputs,
    } => d(Object, "C_CopyObject").changes_token().hands_out().access(Enroller),
    DestroyObject {
        session: u64,
        object: u64,
    } => d(Object, "C_DestroyObject").changes_token().recorded().access(Enroller),
    GetObjectSize {
        session: u64,
        object: u64,
        outputs: Outputs,
    } => d(Object, "C_GetObjectSize").repeatable().access(Signer),
    GetAttributeValue {
        session: u64,
        object: u64,
        query: Array<AttrQuery>,
        /// A size query (every attribute's length, none a nested template) the server may
        /// complete: when the vendor answers it CKR_OK, the server makes the real call with a
        /// buffer of each length ([`Response::AttributesCompleted`]), so that the
        /// application's follow-up costs no round trip (DESIGN.md, "Two-call functions").
        complete: bool,
    } => d(Object, "C_GetAttributeValue").repeatable().access(Signer),
    SetAttributeValue {
        session: u64,
        object: u64,
        template: Array<Attribute>,
    } => d(Object, "C_SetAttributeValue").changes_token().recorded().access(Enroller),
    FindObjectsInit {
        session: u64,
        template: Array<Attribute>,
        /// Not 0: once the search started, the server runs C_FindObjects for up to this many
        /// handles at once, and C_FindObjectsFinal if that exhausted the search
        /// ([`Response::Found`]), so that a search costs one round trip.
        prefetch: u64,
    } => d(Object, "C_FindObjectsInit").step(Step::Init(Op::Find)).hands_out().access(Signer),
    FindObjects {
        session: u64,
        max_count: u64,
        outputs: Outputs,
    } => d(Object, "C_FindObjects").step(Step::Data(&[Op::Find])).hands_out().access(Signer),
    FindObjectsFinal {
        session: u64,
    } => d(Object, "C_FindObjectsFinal").step(Step::Ends(Op::Find)).access(Signer),
    // Encryption (v2.40 §5.8).
    EncryptInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    } => d(Crypto, "C_EncryptInit").step(Step::Init(Op::Encrypt)),
    Encrypt {
        session: u64,
        data: Bytes,
        capacity: Out,
    } => d(Crypto, "C_Encrypt").step(Step::SinglePart(Op::Encrypt)),
    EncryptUpdate {
        session: u64,
        data: Bytes,
        capacity: Out,
    } => d(Crypto, "C_EncryptUpdate").step(Step::Data(&[Op::Encrypt])),
    EncryptFinal {
        session: u64,
        capacity: Out,
    } => d(Crypto, "C_EncryptFinal").step(Step::Final(Op::Encrypt)),
    // Decryption (v2.40 §5.9).
    DecryptInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    } => d(Crypto, "C_DecryptInit").step(Step::Init(Op::Decrypt)),
    Decrypt {
        session: u64,
        data: Bytes,
        capacity: Out,
    } => d(Crypto, "C_Decrypt").step(Step::SinglePart(Op::Decrypt)),
    DecryptUpdate {
        session: u64,
        data: Bytes,
        capacity: Out,
    } => d(Crypto, "C_DecryptUpdate").step(Step::Data(&[Op::Decrypt])),
    DecryptFinal {
        session: u64,
        capacity: Out,
    } => d(Crypto, "C_DecryptFinal").step(Step::Final(Op::Decrypt)),
    // Message digesting (v2.40 §5.10).
    DigestInit {
        session: u64,
        mechanism: Mechanism,
    } => d(Crypto, "C_DigestInit").step(Step::Init(Op::Digest)).access(Signer),
    Digest {
        session: u64,
        data: Bytes,
        capacity: Out,
    } => d(Crypto, "C_Digest").step(Step::SinglePart(Op::Digest)).access(Signer),
    DigestUpdate {
        session: u64,
        data: Bytes,
    } => d(Crypto, "C_DigestUpdate").step(Step::Data(&[Op::Digest])).access(Signer),
    DigestKey {
        session: u64,
        key: u64,
    } => d(Crypto, "C_DigestKey").step(Step::Data(&[Op::Digest])).access(Signer),
    DigestFinal {
        session: u64,
        capacity: Out,
    } => d(Crypto, "C_DigestFinal").step(Step::Final(Op::Digest)).access(Signer),
    // Signing and MACing (v2.40 §5.11).
    SignInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    } => d(Crypto, "C_SignInit").step(Step::Init(Op::Sign)).access(Signer),
    Sign {
        session: u64,
        data: Bytes,
        capacity: Out,
    } => d(Crypto, "C_Sign").step(Step::SinglePart(Op::Sign)).access(Signer),
    SignUpdate {
        session: u64,
        data: Bytes,
    } => d(Crypto, "C_SignUpdate").step(Step::Data(&[Op::Sign])).access(Signer),
    SignFinal {
        session: u64,
        capacity: Out,
    } => d(Crypto, "C_SignFinal").step(Step::Final(Op::Sign)).access(Signer),
    SignRecoverInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    } => d(Crypto, "C_SignRecoverInit").step(Step::Init(Op::SignRecover)).access(Signer),
    SignRecover {
        session: u64,
        data: Bytes,
        capacity: Out,
    } => d(Crypto, "C_SignRecover").step(Step::SinglePart(Op::SignRecover)).access(Signer),
    // Verifying signatures and MACs (v2.40 §5.12).
    VerifyInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    } => d(Crypto, "C_VerifyInit").step(Step::Init(Op::Verify)).access(Signer),
    Verify {
        session: u64,
        data: Bytes,
        signature: Bytes,
    } => d(Crypto, "C_Verify").step(Step::Ends(Op::Verify)).access(Signer),
    VerifyUpdate {
        session: u64,
        data: Bytes,
    } => d(Crypto, "C_VerifyUpdate").step(Step::Data(&[Op::Verify])).access(Signer),
    VerifyFinal {
        session: u64,
        signature: Bytes,
    } => d(Crypto, "C_VerifyFinal").step(Step::Ends(Op::Verify)).access(Signer),
    VerifyRecoverInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    } => d(Crypto, "C_VerifyRecoverInit").step(Step::Init(Op::VerifyRecover)).access(Signer),
    VerifyRecover {
        session: u64,
        signature: Bytes,
        capacity: Out,
    } => d(Crypto, "C_VerifyRecover").step(Step::SinglePart(Op::VerifyRecover)).access(Signer),
    // Dual-function cryptographic functions (v2.40 §5.13).
    DigestEncryptUpdate {
        session: u64,
        data: Bytes,
        capacity: Out,
    } => d(Crypto, "C_DigestEncryptUpdate").step(Step::Data(&[Op::Digest, Op::Encrypt])),
    DecryptDigestUpdate {
        session: u64,
        data: Bytes,
        capacity: Out,
    } => d(Crypto, "C_DecryptDigestUpdate").step(Step::Data(&[Op::Decrypt, Op::Digest])),
    SignEncryptUpdate {
        session: u64,
        data: Bytes,
        capacity: Out,
    } => d(Crypto, "C_SignEncryptUpdate").step(Step::Data(&[Op::Sign, Op::Encrypt])),
    DecryptVerifyUpdate {
        session: u64,
        data: Bytes,
        capacity: Out,
    } => d(Crypto, "C_DecryptVerifyUpdate").step(Step::Data(&[Op::Decrypt, Op::Verify])),
    // Key management (v2.40 §5.14).
    GenerateKey {
        session: u64,
        mechanism: Mechanism,
        template: Array<Attribute>,
        outputs: Outputs,
    } => d(Key, "C_GenerateKey").changes_token().hands_out().deadline(Slow).access(Enroller),
    GenerateKeyPair {
        session: u64,
        mechanism: Mechanism,
        public_template: Array<Attribute>,
        private_template: Array<Attribute>,
        outputs: Outputs,
    } => d(Key, "C_GenerateKeyPair").changes_token().hands_out().deadline(Slow).access(Enroller),
    WrapKey {
        session: u64,
        mechanism: Mechanism,
        wrapping_key: u64,
        key: u64,
        capacity: Out,
    } => d(Key, "C_WrapKey").deadline(Slow),
    UnwrapKey {
        session: u64,
        mechanism: Mechanism,
        unwrapping_key: u64,
        wrapped_key: Bytes,
        template: Array<Attribute>,
        outputs: Outputs,
    } => d(Key, "C_UnwrapKey").changes_token().hands_out().deadline(Slow),
    DeriveKey {
        session: u64,
        mechanism: Mechanism,
        base_key: u64,
        template: Array<Attribute>,
        outputs: Outputs,
    } => d(Key, "C_DeriveKey").changes_token().hands_out().deadline(Slow),
    // Random number generation (v2.40 §5.15).
    SeedRandom {
        session: u64,
        seed: Bytes,
    } => d(Key, "C_SeedRandom").access(Signer),
    GenerateRandom {
        session: u64,
        len: u64,
        outputs: Outputs,
    } => d(Key, "C_GenerateRandom").repeatable().access(Signer),
    // PKCS#11 v3.0 additions (v3.0 §5.6, §5.9 to §5.16).
    LoginUser {
        session: u64,
        user_type: u64,
        pin: Pin,
        username: Bytes,
    } => d(Session, "C_LoginUser").carries_pin().recorded().changes_view().deadline(Slow).access(Signer),
    SessionCancel {
        session: u64,
        flags: u64,
    } => d(Session, "C_SessionCancel").step(Step::Forget).access(Signer),
    MessageEncryptInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    } => d(Message, "C_MessageEncryptInit").step(Step::Init(Op::MessageEncrypt)),
    EncryptMessage {
        session: u64,
        param: MsgParam,
        aad: Bytes,
        data: Bytes,
        capacity: Out,
    } => d(Message, "C_EncryptMessage"),
    EncryptMessageBegin {
        session: u64,
        param: MsgParam,
        aad: Bytes,
    } => d(Message, "C_EncryptMessageBegin").step(Step::Data(&[Op::MessageEncrypt])),
    EncryptMessageNext {
        session: u64,
        param: MsgParam,
        data: Bytes,
        capacity: Out,
        flags: u64,
    } => d(Message, "C_EncryptMessageNext").step(Step::Data(&[Op::MessageEncrypt])),
    MessageEncryptFinal {
        session: u64,
    } => d(Message, "C_MessageEncryptFinal").step(Step::Ends(Op::MessageEncrypt)),
    MessageDecryptInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    } => d(Message, "C_MessageDecryptInit").step(Step::Init(Op::MessageDecrypt)),
    DecryptMessage {
        session: u64,
        param: MsgParam,
        aad: Bytes,
        data: Bytes,
        capacity: Out,
    } => d(Message, "C_DecryptMessage"),
    DecryptMessageBegin {
        session: u64,
        param: MsgParam,
        aad: Bytes,
    } => d(Message, "C_DecryptMessageBegin").step(Step::Data(&[Op::MessageDecrypt])),
    DecryptMessageNext {
        session: u64,
        param: MsgParam,
        data: Bytes,
        capacity: Out,
        flags: u64,
    } => d(Message, "C_DecryptMessageNext").step(Step::Data(&[Op::MessageDecrypt])),
    MessageDecryptFinal {
        session: u64,
    } => d(Message, "C_MessageDecryptFinal").step(Step::Ends(Op::MessageDecrypt)),
    MessageSignInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    } => d(Message, "C_MessageSignInit").step(Step::Init(Op::MessageSign)).access(Signer),
    SignMessage {
        session: u64,
        param: MsgParam,
        data: Bytes,
        capacity: Out,
    } => d(Message, "C_SignMessage").access(Signer),
    SignMessageBegin {
        session: u64,
        param: MsgParam,
    } => d(Message, "C_SignMessageBegin").step(Step::Data(&[Op::MessageSign])).access(Signer),
    /// A `capacity` without a length pointer is "not the last part" (v3.0 §5.14.4).
    SignMessageNext {
        session: u64,
        param: MsgParam,
        data: Bytes,
        capacity: Out,
    } => d(Message, "C_SignMessageNext").step(Step::Data(&[Op::MessageSign])).access(Signer),
    MessageSignFinal {
        session: u64,
    } => d(Message, "C_MessageSignFinal").step(Step::Ends(Op::MessageSign)).access(Signer),
    MessageVerifyInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
    } => d(Message, "C_MessageVerifyInit").step(Step::Init(Op::MessageVerify)).access(Signer),
    VerifyMessage {
        session: u64,
        param: MsgParam,
        data: Bytes,
        signature: Bytes,
    } => d(Message, "C_VerifyMessage").access(Signer),
    VerifyMessageBegin {
        session: u64,
        param: MsgParam,
    } => d(Message, "C_VerifyMessageBegin").step(Step::Data(&[Op::MessageVerify])).access(Signer),
    /// `signature` is `None` when the caller's `pSignature` is NULL (not the last part).
    VerifyMessageNext {
        session: u64,
        param: MsgParam,
        data: Bytes,
        signature: Bytes,
    } => d(Message, "C_VerifyMessageNext").step(Step::Data(&[Op::MessageVerify])).access(Signer),
    MessageVerifyFinal {
        session: u64,
    } => d(Message, "C_MessageVerifyFinal").step(Step::Ends(Op::MessageVerify)).access(Signer),
    /// Not a PKCS#11 function: the identity of objects handed out earlier, for the shim's
    /// recovery, when it did not come with the answer that handed them out (another thread
    /// got it). Answered with [`Response::Identified`] around `CKR_OK`.
    IdentifyObjects {
        session: u64,
        objects: Vec<u64>,
    } => d(Object, "C_GetAttributeValue").access(Signer),
    // PKCS#11 v3.2 additions, after every earlier row so that earlier encodings are unchanged
    // (an older server does not decode them: the shim sends them only when the server says
    // the vendor offers the 3.2 interface). Key encapsulation (v3.2 C_EncapsulateKey,
    // C_DecapsulateKey): a new key from the other party's key, like a derivation.
    /// `capacity` is the ciphertext buffer (two-call convention); the key is made only by a
    /// call that writes the ciphertext.
    EncapsulateKey {
        session: u64,
        mechanism: Mechanism,
        public_key: u64,
        template: Array<Attribute>,
        capacity: Out,
        outputs: Outputs,
    } => d(Key, "C_EncapsulateKey").changes_token().hands_out().deadline(Slow),
    DecapsulateKey {
        session: u64,
        mechanism: Mechanism,
        private_key: u64,
        template: Array<Attribute>,
        ciphertext: Bytes,
        outputs: Outputs,
    } => d(Key, "C_DecapsulateKey").changes_token().hands_out().deadline(Slow),
    // Verifying a signature given at init (v3.2 C_VerifySignatureInit and its steps).
    VerifySignatureInit {
        session: u64,
        mechanism: Mechanism,
        key: u64,
        signature: Bytes,
    } => d(Crypto, "C_VerifySignatureInit").step(Step::Init(Op::VerifySignature)).access(Signer),
    VerifySignature {
        session: u64,
        data: Bytes,
    } => d(Crypto, "C_VerifySignature").step(Step::Ends(Op::VerifySignature)).access(Signer),
    VerifySignatureUpdate {
        session: u64,
        data: Bytes,
    } => d(Crypto, "C_VerifySignatureUpdate").step(Step::Data(&[Op::VerifySignature])).access(Signer),
    VerifySignatureFinal {
        session: u64,
    } => d(Crypto, "C_VerifySignatureFinal").step(Step::Ends(Op::VerifySignature)).access(Signer),
    // Session validation flags (v3.2 C_GetSessionValidationFlags): read only.
    GetSessionValidationFlags {
        session: u64,
        flags_type: u64,
        outputs: Outputs,
    } => d(Session, "C_GetSessionValidationFlags").repeatable().access(Signer),
    // Asynchronous operations (v3.2 C_AsyncComplete, C_AsyncGetID, C_AsyncJoin): answered by
    // the worker as a library without asynchronous support answers them, never given to the
    // vendor (see `worker/dispatch/general.rs`).
    AsyncComplete {
        session: u64,
        function_name: Bytes,
        outputs: Outputs,
    } => d(General, "C_AsyncComplete").repeatable().access(Signer),
    AsyncGetId {
        session: u64,
        function_name: Bytes,
        outputs: Outputs,
    } => d(General, "C_AsyncGetID").repeatable().access(Signer),
    AsyncJoin {
        session: u64,
        function_name: Bytes,
        operation_id: u64,
        capacity: Out,
    } => d(General, "C_AsyncJoin").repeatable().access(Signer),
    // Authenticated key wrapping (v3.2 C_WrapKeyAuthenticated, C_UnwrapKeyAuthenticated).
    WrapKeyAuthenticated {
        session: u64,
        mechanism: Mechanism,
        wrapping_key: u64,
        key: u64,
        associated_data: Bytes,
        capacity: Out,
    } => d(Key, "C_WrapKeyAuthenticated").deadline(Slow),
    UnwrapKeyAuthenticated {
        session: u64,
        mechanism: Mechanism,
        unwrapping_key: u64,
        wrapped_key: Bytes,
        template: Array<Attribute>,
        associated_data: Bytes,
        outputs: Outputs,
    } => d(Key, "C_UnwrapKeyAuthenticated").changes_token().hands_out().deadline(Slow),
}

impl Request {
    /// What the function this request stands for is.
    pub fn descriptor(&self) -> &'static Descriptor {
        self.function().descriptor()
    }

    /// The object handles this request names (at most two: C_WrapKey's keys,
    /// C_SetOperationState's keys). A mechanism parameter that is itself a handle
    /// (CKM_CONCATENATE_BASE_AND_KEY) travels as bytes and is not included.
    pub fn object_handles(&self) -> [Option<u64>; 2] {
        object_handles!(self).map(|h| h.copied())
    }

    /// [`Request::object_handles`], to change.
    pub fn object_handles_mut(&mut self) -> [Option<&mut u64>; 2] {
        object_handles!(self)
    }
}

/// The object handle fields of a request (`&` or `&mut`, by the binding mode of `$request`).
macro_rules! object_handles {
    ($request:expr) => {{
        use Request::*;
        match $request {
            SetOperationState {
                encryption_key,
                authentication_key,
                ..
            } => [Some(encryption_key), Some(authentication_key)],
            WrapKey {
                wrapping_key, key, ..
            }
            | WrapKeyAuthenticated {
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
            | MessageVerifyInit { key, .. }
            | VerifySignatureInit { key, .. } => [Some(key), None],
            UnwrapKey { unwrapping_key, .. } | UnwrapKeyAuthenticated { unwrapping_key, .. } => {
                [Some(unwrapping_key), None]
            }
            EncapsulateKey { public_key, .. } => [Some(public_key), None],
            DecapsulateKey { private_key, .. } => [Some(private_key), None],
            DeriveKey { base_key, .. } => [Some(base_key), None],
            _ => [None, None],
        }
    }};
}
use object_handles;
