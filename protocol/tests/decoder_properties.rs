//! Property tests of the decoder: random and mutated frames never panic, lengths are checked
//! before allocation, and every well-formed message survives a round trip.

use proptest::prelude::*;
use protocol::attribute::{AttrQuery, AttrValue, Attribute, Want};
use protocol::codec;
use protocol::frame::{read_frame, write_frame, MAX_FRAME_LEN};
use protocol::fuzzing::decode_stream;
use protocol::mechanism::{MechParam, Mechanism};
use protocol::message::Request;
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
        .map(|r| {
            let mut payload = Vec::new();
            codec::encode(r, &mut payload).unwrap();
            let mut framed = Vec::new();
            write_frame(&mut framed, &payload, &mut Vec::new()).unwrap();
            framed
        })
        .collect()
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
