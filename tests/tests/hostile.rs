//! A live server fed random and mutated frames by hostile peers, before and after the
//! handshake: it never crashes, its memory stays bounded, and a good client is served after.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cryptoki_sys::*;
use protocol::codec;
use protocol::handshake::{routing_id, Hello, Prelude, ROUTE_ANSWER_LEN};
use protocol::mechanism::{MechParam, Mechanism};
use protocol::message::Request;
use protocol::shape::Outputs;
use tests::raw::RawModule;
use tests::{private_copy, shim_path, with_env, ProxyServer, SoftHsm, TempDir, PIN};

/// xorshift64*: reproducible mutations without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn payloads() -> Vec<Vec<u8>> {
    [
        Request::OpenSession {
            slot: 1,
            flags: 6,
            outputs: Outputs::ALL,
        },
        Request::Login {
            session: 1,
            user_type: 1,
            pin: Some(b"1234".to_vec().into()),
        },
        Request::SignInit {
            session: 1,
            mechanism: Mechanism {
                ty: 0x1041,
                param: MechParam::Bytes(vec![1, 2, 3]),
            },
            key: 1,
        },
        Request::IdentifyObjects {
            session: 1,
            objects: vec![1, 2, 3],
        },
        Request::GetAttributeValue {
            session: 1,
            object: 1,
            query: vec![].into(),
            complete: false,
        },
        Request::FindObjects {
            session: 1,
            max_count: 10,
            outputs: Outputs::ALL,
        },
    ]
    .iter()
    .map(|r| {
        let mut b = Vec::new();
        codec::encode(r, &mut b).unwrap();
        b
    })
    .collect()
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

#[test]
fn random_and_mutated_frames_do_not_hurt_the_server() {
    let hsm = SoftHsm::new("hostile");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let addr = server.address.trim_start_matches("tcp://").to_string();
    let seeds = payloads();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut inputs = 0;
    for round in 0..900 {
        let Ok(mut c) = TcpStream::connect(&addr) else {
            continue;
        };
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if round % 3 != 0 {
            // A valid prelude and hello first, so the frames reach a worker's request
            // decoder; four applications (four workers) take them all.
            let mut id = [0u8; 16];
            id[0] = rng.below(4) as u8;
            let prelude = Prelude {
                routing_id: routing_id(&id),
                ..Default::default()
            };
            let _ = c.write_all(&prelude.encode());
            let _ = c.write_all(&framed(&Hello::new(8, id, None).encode()));
            let mut answers = [0u8; ROUTE_ANSWER_LEN + 4 + 35];
            let _ = c.read_exact(&mut answers);
        }
        for _ in 0..10 {
            let mut payload = match rng.below(3) {
                0 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
                _ => seeds[rng.below(seeds.len())].clone(),
            };
            for _ in 0..=rng.below(4) {
                if !payload.is_empty() {
                    let i = rng.below(payload.len());
                    payload[i] ^= rng.next() as u8;
                }
            }
            let mut frame = framed(&payload);
            let lie = rng.below(8) == 0;
            if lie {
                // Lie about the length: bigger than sent, or beyond the limit. The stream is
                // out of step after that: this connection's last input.
                let announced = if rng.below(2) == 0 {
                    u32::MAX
                } else {
                    payload.len() as u32 + 1000
                };
                frame[..4].copy_from_slice(&announced.to_le_bytes());
            }
            inputs += 1;
            if c.write_all(&frame).is_err() || lie {
                break;
            }
            let mut sink = [0u8; 4096];
            let _ = c.read(&mut sink);
        }
    }
    println!(
        "{inputs} malformed inputs sent on 900 connections; server RSS {} KiB",
        server.rss_kib()
    );
    assert!(inputs >= 2000);
    assert!(
        server.rss_kib() < 200 * 1024,
        "server RSS {} KiB",
        server.rss_kib()
    );

    // The server is alive and serves a good client normally.
    let dir = TempDir::new("hostile");
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || m
            .initialize()),
        CKR_OK
    );
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, PIN), CKR_OK);
}
