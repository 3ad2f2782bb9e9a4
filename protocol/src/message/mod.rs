//! The messages: one [`Request`] variant per PKCS#11 function (with its [`Function`]
//! descriptor, in `request.rs`), and the [`Response`] shapes they answer with.
//!
//! Handles, slot ids, flags, lengths and return values are `u64` (a `CK_ULONG` in C).

mod request;
mod response;

pub use request::{Function, Pin, Request, SecretBytes};
pub use response::{
    Identity, Info, MechanismInfo, Response, SessionInfo, SlotInfo, TokenInfo, Version,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::{AttrQuery, AttrValue, Attribute, Want};
    use crate::codec;
    use crate::mechanism::MechParam;
    use crate::mechanism::Mechanism;
    use crate::shape::{Bytes, Out, Outputs};

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
        assert_eq!(pin.descriptor().name, "C_SetPIN");
        assert_eq!(
            Request::GetSlotList {
                token_present: false,
                capacity: Out::query(0)
            }
            .descriptor()
            .name,
            "C_GetSlotList"
        );
        // Every name is a C_ name, once (C_GetAttributeValue also names what the server calls
        // for IdentifyObjects), and the chapter's functions are grouped.
        let mut names: Vec<&str> = Function::ALL
            .iter()
            .filter(|f| **f != Function::IdentifyObjects)
            .map(|f| f.descriptor().name)
            .collect();
        assert!(names.iter().all(|n| n.starts_with("C_")));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a function name is given twice");
        // v2.40's 68, v3.0's 24 and v3.2's 12, less what the shim answers itself:
        // C_GetFunctionList, C_GetInterfaceList and C_GetInterface.
        assert_eq!(n, 68 + 24 + 12 - 3);
    }

    #[test]
    fn accessors_find_arguments_by_name() {
        use crate::function::{OpKind, Step};
        let mut sign = Request::Sign {
            session: 7,
            data: Bytes::Given(vec![1, 2]),
            capacity: Out::query(0),
        };
        assert_eq!(sign.session_mut().copied(), Some(7));
        assert_eq!(sign.capacity(), Some(&Out::query(0)));
        assert_eq!(sign.data(), Some(&Bytes::Given(vec![1, 2])));
        assert_eq!(sign.signature(), None);
        assert_eq!(sign.descriptor().step, Step::SinglePart(OpKind::Sign));
        let mut info = Request::GetInfo {
            outputs: Outputs::ALL,
        };
        assert_eq!(info.session_mut(), None);
        assert_eq!(info.capacity(), None);
        let mech = Request::GetMechanismInfo {
            slot: 0,
            mechanism_type: 0x1041,
            outputs: Outputs::ALL,
        };
        assert_eq!(mech.mechanism(), None);
        assert_eq!((mech.slot(), mech.session()), (Some(0), None));
        assert_eq!((sign.slot(), sign.session()), (None, Some(7)));
    }

    #[test]
    fn what_each_function_is_said_once() {
        for f in Function::ALL {
            let d = f.descriptor();
            // A call that may change the token is never repeated after a lost answer.
            assert!(!(d.repeatable && d.changes_token), "{}", d.name);
            // An operation step is never repeatable: the vendor's operation moved on.
            assert!(
                d.step == crate::function::Step::None || !d.repeatable,
                "{}",
                d.name
            );
        }
    }

    #[test]
    fn slow_calls_are_key_making_token_management_and_login() {
        use crate::function::Deadline;
        let named = |deadline| -> Vec<&str> {
            Function::ALL
                .iter()
                .map(|f| f.descriptor())
                .filter(|d| d.deadline == deadline)
                .map(|d| d.name)
                .collect()
        };
        assert_eq!(
            named(Deadline::Slow),
            [
                "C_InitToken",
                "C_InitPIN",
                "C_SetPIN",
                "C_Login",
                "C_GenerateKey",
                "C_GenerateKeyPair",
                "C_WrapKey",
                "C_UnwrapKey",
                "C_DeriveKey",
                "C_LoginUser",
                "C_EncapsulateKey",
                "C_DecapsulateKey",
                "C_WrapKeyAuthenticated",
                "C_UnwrapKeyAuthenticated"
            ]
        );
        assert_eq!(named(Deadline::Unbounded), ["C_WaitForSlotEvent"]);
    }
}
