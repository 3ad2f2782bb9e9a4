//! Object handles that answers hand out, and what identifies a token object again on another
//! server instance (DESIGN.md, "Recovery model"): the one place both sides take them from.
//!
//! The server reads a handed-out object's identity in the same round trip as the answer that
//! hands it out ([`crate::message::Response::Identified`]), asking each class only the
//! attributes that class has (v2.40 §4.4 to §4.11), so that no extra round trip and no
//! spurious failed call is made for it.

use crate::attribute::{AttrValue, Attribute};
use crate::message::{Request, Response};

const CKA_CLASS: u64 = 0x000;
const CKA_TOKEN: u64 = 0x001;
const CKA_PRIVATE: u64 = 0x002;
const CKA_LABEL: u64 = 0x003;
const CKA_APPLICATION: u64 = 0x010;
const CKA_CERTIFICATE_TYPE: u64 = 0x080;
const CKA_KEY_TYPE: u64 = 0x100;
const CKA_ID: u64 = 0x102;

const CKO_DATA: u64 = 0;
const CKO_CERTIFICATE: u64 = 1;
const CKO_PUBLIC_KEY: u64 = 2;
const CKO_PRIVATE_KEY: u64 = 3;
const CKO_SECRET_KEY: u64 = 4;
const CKO_DOMAIN_PARAMETERS: u64 = 6;
const CKO_OTP_KEY: u64 = 8;

/// Longest CKA_ID, CKA_LABEL or CKA_APPLICATION kept in an identity (Fabric's SKI is 32
/// bytes); a longer value is left out of it.
const TEXT_BUFFER: u64 = 256;

/// The identifying attributes of a storage object of `class`, with the buffer to ask for each
/// (in wire units), or `None` for a class that is not a storage object (v2.40 §4.3, §4.12:
/// hardware features and mechanisms have no CKA_TOKEN). Every storage object has CKA_TOKEN,
/// CKA_PRIVATE and CKA_LABEL (§4.4); data objects CKA_APPLICATION (§4.5); certificates their
/// type and CKA_ID (§4.6); keys their type and CKA_ID (§4.7); domain parameters their type
/// (§4.11).
pub fn identity_query(class: u64) -> Option<&'static [(u64, u64)]> {
    const STORAGE: [(u64, u64); 3] = [(CKA_TOKEN, 1), (CKA_PRIVATE, 1), (CKA_LABEL, TEXT_BUFFER)];
    const DATA: [(u64, u64); 4] = [
        STORAGE[0],
        STORAGE[1],
        STORAGE[2],
        (CKA_APPLICATION, TEXT_BUFFER),
    ];
    const CERTIFICATE: [(u64, u64); 5] = [
        STORAGE[0],
        STORAGE[1],
        STORAGE[2],
        (CKA_CERTIFICATE_TYPE, 1),
        (CKA_ID, TEXT_BUFFER),
    ];
    const KEY: [(u64, u64); 5] = [
        STORAGE[0],
        STORAGE[1],
        STORAGE[2],
        (CKA_KEY_TYPE, 1),
        (CKA_ID, TEXT_BUFFER),
    ];
    const DOMAIN: [(u64, u64); 4] = [STORAGE[0], STORAGE[1], STORAGE[2], (CKA_KEY_TYPE, 1)];
    match class {
        CKO_DATA => Some(&DATA),
        CKO_CERTIFICATE => Some(&CERTIFICATE),
        CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY | CKO_OTP_KEY => Some(&KEY),
        CKO_DOMAIN_PARAMETERS => Some(&DOMAIN),
        _ => None,
    }
}

/// Whether an attribute of type `ty` is part of an object's identity (a C_SetAttributeValue
/// that changes it changes the identity: Fabric sets CKA_ID and CKA_LABEL after generating).
pub fn is_identifying(ty: u64) -> bool {
    ty == CKA_CLASS
        || [
            CKO_DATA,
            CKO_CERTIFICATE,
            CKO_PRIVATE_KEY,
            CKO_DOMAIN_PARAMETERS,
        ]
        .iter()
        .filter_map(|c| identity_query(*c))
        .any(|q| q.iter().any(|(t, _)| *t == ty))
}

/// An identity made of `class` and the attributes read for it: `Some` for a token object
/// (CKA_TOKEN true), `None` otherwise (a session object cannot survive a restart).
pub fn token_identity(class: u64, read: Vec<Attribute>) -> Option<Vec<Attribute>> {
    let token = read
        .iter()
        .any(|a| a.ty == CKA_TOKEN && a.value == AttrValue::Bool(true));
    token.then(|| {
        let mut identity = vec![Attribute {
            ty: CKA_CLASS,
            value: AttrValue::Ulong(class),
        }];
        identity.extend(read);
        identity
    })
}

/// What a request that hands out object handles says about them before the vendor answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handout {
    /// The session it is made on.
    pub session: u64,
    /// Each object's class where the request fixes it (a search template, a creation
    /// template, C_GenerateKeyPair's two keys), in the order of [`handed_out`].
    pub classes: [Option<u64>; 2],
    /// Whether each object the request makes is a session object.
    pub made_session_objects: [bool; 2],
}

impl Handout {
    /// For a request whose answer may hand out object handles.
    pub fn of(request: &Request) -> Option<Self> {
        let class = |t: &[Attribute]| {
            t.iter()
                .find(|a| a.ty == CKA_CLASS)
                .and_then(|a| match a.value {
                    AttrValue::Ulong(c) => Some(c),
                    _ => None,
                })
        };
        let (session, classes) = match request {
            Request::CreateObject {
                session, template, ..
            }
            | Request::UnwrapKey {
                session, template, ..
            }
            | Request::DeriveKey {
                session, template, ..
            }
            | Request::EncapsulateKey {
                session, template, ..
            }
            | Request::DecapsulateKey {
                session, template, ..
            }
            | Request::UnwrapKeyAuthenticated {
                session, template, ..
            }
            | Request::GenerateKey {
                session, template, ..
            }
            | Request::FindObjectsInit {
                session, template, ..
            } => (*session, [class(template), None]),
            Request::CopyObject { session, .. } | Request::FindObjects { session, .. } => {
                (*session, [None, None])
            }
            Request::GenerateKeyPair { session, .. } => {
                (*session, [Some(CKO_PUBLIC_KEY), Some(CKO_PRIVATE_KEY)])
            }
            _ => return None,
        };
        Some(Self {
            session,
            classes,
            made_session_objects: made_session_objects(request),
        })
    }
}

/// The value of CKA_TOKEN in a template, if it has one.
fn token_flag(template: &[Attribute]) -> Option<bool> {
    template
        .iter()
        .find(|a| a.ty == CKA_TOKEN)
        .and_then(|a| match &a.value {
            AttrValue::Bool(b) => Some(*b),
            AttrValue::Bytes(b) if b.len() == 1 => Some(b[0] != 0),
            _ => None,
        })
}

/// Whether each object a creating request makes is a session object (CKA_TOKEN defaults to
/// false, v2.40 §4.4; a copy keeps the original's unless the template says).
fn made_session_objects(request: &Request) -> [bool; 2] {
    let session = |t: &[Attribute]| token_flag(t) != Some(true);
    match request {
        Request::CreateObject { template, .. }
        | Request::GenerateKey { template, .. }
        | Request::UnwrapKey { template, .. }
        | Request::DeriveKey { template, .. }
        | Request::EncapsulateKey { template, .. }
        | Request::DecapsulateKey { template, .. }
        | Request::UnwrapKeyAuthenticated { template, .. } => [session(template), false],
        Request::CopyObject { template, .. } => [token_flag(template) == Some(false), false],
        Request::GenerateKeyPair {
            public_template,
            private_template,
            ..
        } => [session(public_template), session(private_template)],
        _ => [false, false],
    }
}

/// The object handles a response to `request` carries, in order (C_GenerateKeyPair: the
/// public key, then the private key).
pub fn handed_out<'r>(request: &Request, response: &'r mut Response) -> Vec<&'r mut u64> {
    match Handout::of(request) {
        Some(handout) => handout.objects(response),
        None => Vec::new(),
    }
}

impl Handout {
    /// Whether object `i` of the answer is a session object the request made.
    pub fn makes_session_object(&self, i: usize) -> bool {
        self.made_session_objects.get(i).copied().unwrap_or(false)
    }

    /// Object `i`'s class, where the request fixes it.
    pub fn class(&self, i: usize) -> Option<u64> {
        self.classes.get(i).copied().flatten()
    }

    /// The object handles the answer to this handout's request carries, in order: the one
    /// place that knows which answers hold handles.
    pub fn objects<'r>(&self, response: &'r mut Response) -> Vec<&'r mut u64> {
        match response {
            Response::Handle(h) => vec![h],
            Response::KeyPair {
                public_key,
                private_key,
            } => vec![public_key, private_key],
            Response::Ulongs { values, .. }
            | Response::Found {
                objects: values, ..
            } => values.iter_mut().collect(),
            Response::Encapsulated { key, .. } => key.iter_mut().collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_is_asked_only_what_it_has() {
        let types = |c| {
            identity_query(c)
                .unwrap()
                .iter()
                .map(|(t, _)| *t)
                .collect::<Vec<_>>()
        };
        assert!(!types(CKO_PRIVATE_KEY).contains(&CKA_CERTIFICATE_TYPE));
        assert!(!types(CKO_PRIVATE_KEY).contains(&CKA_APPLICATION));
        assert!(types(CKO_PRIVATE_KEY).contains(&CKA_ID));
        assert!(!types(CKO_DATA).contains(&CKA_ID));
        assert!(types(CKO_CERTIFICATE).contains(&CKA_CERTIFICATE_TYPE));
        assert_eq!(identity_query(5), None, "CKO_HW_FEATURE has no CKA_TOKEN");
        assert!(is_identifying(CKA_ID) && is_identifying(CKA_APPLICATION));
        assert!(!is_identifying(0x011), "CKA_VALUE");
    }

    #[test]
    fn only_token_objects_have_an_identity() {
        let token = |b| Attribute {
            ty: CKA_TOKEN,
            value: AttrValue::Bool(b),
        };
        assert_eq!(token_identity(CKO_PRIVATE_KEY, vec![token(false)]), None);
        let id = token_identity(CKO_PRIVATE_KEY, vec![token(true)]).unwrap();
        assert_eq!(id[0].value, AttrValue::Ulong(CKO_PRIVATE_KEY));
    }
}
