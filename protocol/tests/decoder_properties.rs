//! Property tests of the decoder: random and mutated frames never panic, lengths are checked
//! before allocation, and every well-formed message survives a round trip.

use proptest::prelude::*;
use protocol::attribute::{AttrQuery, AttrValue, Attribute, Want};
use protocol::codec;
use protocol::frame::{read_frame, write_frame, MAX_FRAME_LEN};
use protocol::fuzzing::decode_stream;
use protocol::mechanism::{MechParam, Mechanism};
use protocol::message::{Request, Response};
use protocol::shape::{Bytes, Out, Outputs};
use protocol::ProtocolError;

/// Real requests, encoded: the seeds of the mutations.
fn seeds() -> Vec<Vec<u8>> {
    let requests = [
        Request::Initialize { args: None },
        Request::OpenSession {
            slot: 1,
            flags: 6,
            outputs: Outputs::ALL,
        },
        Request::Login {
            session: 7,
            user_type: 1,
            pin: Some(b"1234".to_vec().into()),
        },
        Request::SignInit {
            session: 7,
            mechanism: Mechanism {
                ty: 0x1087,
                param: MechParam::Gcm {
                    iv: vec![0; 12],
                    iv_bits: Some(96),
                    aad: b"aad".to_vec(),
                    tag_bits: 128,
                },
            },
            key: 42,
        },
        Request::Sign {
            session: 7,
            data: vec![0x42; 32].into(),
            capacity: Out::buffer(72),
        },
        Request::CreateObject {
            session: 7,
            template: vec![
                Attribute {
                    ty: 0,
                    value: AttrValue::Ulong(3),
                },
                Attribute {
                    ty: 0x4000_0211,
                    value: AttrValue::Template(
                        vec![Attribute {
                            ty: 1,
                            value: AttrValue::Bool(true),
                        }]
                        .into(),
                    ),
                },
                Attribute {
                    ty: 0x11,
                    value: AttrValue::Bytes(b"value".to_vec()),
                },
            ]
            .into(),
            outputs: Outputs::ALL,
        },
        Request::GetAttributeValue {
            session: 7,
            object: 9,
            query: vec![AttrQuery {
                ty: 0x4000_0211,
                want: Want::Template(
                    vec![AttrQuery {
                        ty: 0,
                        want: Want::Len,
                    }]
                    .into(),
                ),
            }]
            .into(),
            complete: true,
        },
    ];
    requests
        .iter()
        .chain(&v3_2_requests())
        .map(framed)
        .chain(v3_2_responses().iter().map(framed))
        .collect()
}

/// `message` encoded in one frame.
fn framed<T: serde::Serialize>(message: &T) -> Vec<u8> {
    let mut payload = Vec::new();
    codec::encode(message, &mut payload).unwrap();
    let mut framed = Vec::new();
    write_frame(&mut framed, &payload, &mut Vec::new()).unwrap();
    framed
}

/// Requests of the functions PKCS#11 3.2 adds, with their new parameter (the ML-DSA
/// signature context).
fn v3_2_requests() -> Vec<Request> {
    let ml_dsa = Mechanism {
        ty: 0x1d,
        param: MechParam::SignContext {
            hedge: 2,
            context: Bytes::Given(b"fabric-channel".to_vec()),
            hash: None,
        },
    };
    let hash_ml_dsa = Mechanism {
        ty: 0x1f,
        param: MechParam::SignContext {
            hedge: 0,
            context: Bytes::Null(0),
            hash: Some(0x250),
        },
    };
    let ml_kem = Mechanism {
        ty: 0x17,
        param: MechParam::None,
    };
    let secret = vec![Attribute {
        ty: 0x161,
        value: AttrValue::Ulong(32),
    }];
    vec![
        Request::EncapsulateKey {
            session: 7,
            mechanism: ml_kem.clone(),
            public_key: 9,
            template: secret.clone().into(),
            capacity: Out::buffer(1088),
            outputs: Outputs::ALL,
        },
        Request::DecapsulateKey {
            session: 7,
            mechanism: ml_kem,
            private_key: 10,
            template: secret.clone().into(),
            ciphertext: vec![0x5a; 1088].into(),
            outputs: Outputs::ALL,
        },
        Request::VerifySignatureInit {
            session: 7,
            mechanism: ml_dsa.clone(),
            key: 9,
            signature: vec![0x33; 3309].into(),
        },
        Request::VerifySignatureUpdate {
            session: 7,
            data: vec![1; 64].into(),
        },
        Request::VerifySignatureFinal { session: 7 },
        Request::SignInit {
            session: 7,
            mechanism: hash_ml_dsa,
            key: 10,
        },
        Request::GetSessionValidationFlags {
            session: 7,
            flags_type: 1,
            outputs: Outputs::ALL,
        },
        Request::AsyncJoin {
            session: 7,
            function_name: Bytes::Given(b"C_Sign".to_vec()),
            operation_id: 3,
            capacity: Out::buffer(16),
        },
        Request::UnwrapKeyAuthenticated {
            session: 7,
            mechanism: ml_dsa,
            unwrapping_key: 11,
            wrapped_key: vec![2; 40].into(),
            template: secret.into(),
            associated_data: Bytes::Null(0),
            outputs: Outputs::ALL,
        },
    ]
}

/// Answers only PKCS#11 3.2 calls get.
fn v3_2_responses() -> Vec<Response> {
    vec![
        Response::Encapsulated {
            rv: 0,
            len: 1088,
            data: vec![0x77; 1088],
            key: Some(12),
        },
        Response::Encapsulated {
            rv: 0x150,
            len: 1088,
            data: Vec::new(),
            key: None,
        },
        Response::Flags(1),
    ]
}

#[test]
fn v3_2_messages_round_trip() {
    for request in v3_2_requests() {
        let mut payload = Vec::new();
        codec::encode(&request, &mut payload).unwrap();
        assert_eq!(codec::decode::<Request>(&payload).unwrap(), request);
    }
    for response in v3_2_responses() {
        let mut payload = Vec::new();
        codec::encode(&response, &mut payload).unwrap();
        assert_eq!(codec::decode::<Response>(&payload).unwrap(), response);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        decode_stream(&data);
    }

    #[test]
    fn mutated_real_frames_never_panic(
        seed in 0usize..7,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut frame = seeds()[seed].clone();
        for (at, byte) in flips {
            let i = at % frame.len();
            frame[i] ^= byte;
        }
        let cut = cut % (frame.len() + 1);
        decode_stream(&frame[..cut]);
        decode_stream(&frame);
    }

    #[test]
    fn announced_lengths_are_checked_before_allocating(len in (MAX_FRAME_LEN as u64 + 1)..=u32::MAX as u64) {
        let header = (len as u32).to_le_bytes();
        let mut buf = Vec::new();
        let err = read_frame(&mut header.as_slice(), &mut buf, MAX_FRAME_LEN).unwrap_err();
        let too_large = matches!(err, ProtocolError::FrameTooLarge { .. });
        prop_assert!(too_large);
        prop_assert_eq!(buf.capacity(), 0);
    }

    #[test]
    fn sign_requests_round_trip(
        session in any::<u64>(),
        data in proptest::collection::vec(any::<u8>(), 0..512),
        buffer in any::<bool>(),
        len in proptest::option::of(any::<u64>()),
        null in any::<bool>(),
        complete in any::<bool>(),
    ) {
        let data = if null { Bytes::Null(data.len() as u64) } else { data.into() };
        let r = Request::Sign { session, data, capacity: Out { buffer, len, complete } };
        let mut buf = Vec::new();
        codec::encode(&r, &mut buf).unwrap();
        prop_assert_eq!(codec::decode::<Request>(&buf).unwrap(), r);
    }
}

/// The fuzz target's seed corpus (`protocol/fuzz/corpus/frame_decoder`), replayed on every
/// test run: CI runs no fuzzer, but every input the fuzzer kept is checked again.
#[test]
fn fuzz_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_decoder");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("seed corpus") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        decode_stream(&data);
        n += 1;
    }
    assert!(n >= seeds().len(), "{n} corpus files");
}

/// Writes the seeds as corpus files (run with `--ignored` to refresh the corpus).
#[test]
#[ignore]
fn write_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_decoder");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
    }
}
