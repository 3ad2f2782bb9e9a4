//! The answers: [`Response`] and the PKCS#11 information structures it carries.
//!
//! Any call that failed and has nothing more to say answers [`Response::Rv`]; a successful
//! call answers the variant of its shape. The shapes that carry data with an error return
//! value are [`Response::Output`], [`Response::Ulongs`] (`CKR_BUFFER_TOO_SMALL` with the
//! length) and [`Response::Attributes`] (per-attribute results, PKCS#11 v2.40 §5.7).

use serde::{Deserialize, Serialize};

use crate::attribute::{AttrOut, Attribute};
use crate::mechanism::MsgParam;

/// One handed-out object and its identity (`None`: not a token object, or unreadable), for
/// the shim's recovery (DESIGN.md, "Recovery model"; [`crate::objects`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub object: u64,
    pub attributes: Option<Vec<Attribute>>,
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
    /// [`super::Request::IdentifyObjects`]), with the identity of each object the application's
    /// worker had not identified for it yet (hello flag `identify_objects`).
    Identified {
        identities: Vec<Identity>,
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
    /// Not an answer of the vendor: the server instance is leaving (stopping, or replacing a
    /// vendor instance the HSM broke) and did not execute the request, which the client may
    /// send again on a new connection, whatever the function. Sent unasked too, on an idle
    /// connection, before the server closes it. Its index is past every variant a client
    /// built before it knows, so that such a client fails to decode it and takes it for what
    /// it took before: a connection closed without an answer.
    Retired,
    /// C_EncapsulateKey (v3.2): the ciphertext as [`Response::Output`], and the key the call
    /// made (`Some` only when the vendor answered CKR_OK to a call with a ciphertext buffer).
    Encapsulated {
        rv: u64,
        len: u64,
        data: Vec<u8>,
        key: Option<u64>,
    },
    /// `CKR_OK` with a `CK_FLAGS` (C_GetSessionValidationFlags, v3.2).
    Flags(u64),
}

impl Response {
    /// What it hands back, for a call trace: a handle, handles, a length, a count (the
    /// bytes never show; see [`crate::trace`]). Empty when there is nothing to say.
    pub fn trace_answer(&self) -> String {
        fn handles(v: &[u64]) -> String {
            const SHOWN: usize = 16;
            let mut s: Vec<String> = v.iter().take(SHOWN).map(u64::to_string).collect();
            if v.len() > SHOWN {
                s.push(format!("... {} in all", v.len()));
            }
            format!("[{}]", s.join(", "))
        }
        match self {
            Response::Handle(h) => format!("handle {h}"),
            Response::KeyPair {
                public_key,
                private_key,
            } => format!("public {public_key}, private {private_key}"),
            Response::Size(n) => format!("size {n}"),
            Response::Ulongs { count, values, .. } if values.is_empty() => format!("count {count}"),
            Response::Ulongs { values, .. } => handles(values),
            Response::Output { len, .. }
            | Response::Completed { out_len: len, .. }
            | Response::Message { len, .. } => format!("{len} bytes"),
            Response::Encapsulated { len, key, .. } => match key {
                Some(key) => format!("{len} bytes, key {key}"),
                None => format!("{len} bytes"),
            },
            Response::Flags(flags) => format!("flags {flags:#x}"),
            Response::Found { objects, .. } => handles(objects),
            Response::Identified { answer, .. } => answer.trace_answer(),
            Response::Attributes { values, .. } | Response::AttributesCompleted { values, .. } => {
                format!("{} attributes", values.len())
            }
            _ => String::new(),
        }
    }

    /// The PKCS#11 return value this response carries.
    pub fn rv(&self) -> u64 {
        match self {
            Response::Rv(rv)
            | Response::Ulongs { rv, .. }
            | Response::Output { rv, .. }
            | Response::Attributes { rv, .. }
            | Response::Message { rv, .. }
            | Response::Encapsulated { rv, .. } => *rv,
            Response::Identified { answer, .. } => answer.rv(),
            // CKR_DEVICE_ERROR, should anything take it for an answer.
            Response::Retired => 0x30,
            _ => 0,
        }
    }
}
