//! A TCP relay in front of one or more real servers, as a Kubernetes Service (or any TCP load
//! balancer) is: each new connection goes to one of its targets, round robin or at random,
//! and its bytes are copied both ways. Its connections can be cut (a network blip) and its
//! targets changed while it runs (a rolling update, a replica gone). A connection whose
//! target does not answer is closed, as a balancer that still sends to a dead pod does.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How the relay spreads new connections over its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    RoundRobin,
    /// Scattered as a balancer's random choice is, but the same sequence every run (SplitMix64
    /// from a fixed start), so that a test reads the same each time: with two targets the first
    /// connections go 1, 1, 0, 1, 0, 0, 0, 1... and never all to one.
    Random,
}

impl Spread {
    /// The target (of `targets`) of the relay's `n`th connection.
    fn pick(self, n: u64, targets: usize) -> usize {
        (match self {
            Spread::RoundRobin => n,
            Spread::Random => mix(n),
        } % targets as u64) as usize
    }
}

pub struct Relay {
    /// `tcp://127.0.0.1:PORT`, for `PKCS11_PROXY_SOCKET`.
    pub address: String,
    targets: Arc<Mutex<Vec<String>>>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    /// Connections relayed to each target so far, by target address.
    counts: Arc<Mutex<Vec<(String, u64)>>>,
}

impl Relay {
    /// A relay on a free loopback port to `targets` (`tcp://HOST:PORT` or `HOST:PORT`).
    pub fn start(targets: &[&str], spread: Spread) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("tcp://{}", listener.local_addr().unwrap());
        let relay = Self {
            address,
            targets: Arc::new(Mutex::new(Vec::new())),
            live: Arc::new(Mutex::new(Vec::new())),
            counts: Arc::new(Mutex::new(Vec::new())),
        };
        relay.set_targets(targets);
        let (targets, live, counts) = (
            relay.targets.clone(),
            relay.live.clone(),
            relay.counts.clone(),
        );
        let next = AtomicU64::new(0);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let target = {
                    let targets = targets.lock().unwrap();
                    if targets.is_empty() {
                        continue;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    targets[spread.pick(n, targets.len())].clone()
                };
                {
                    let mut counts = counts.lock().unwrap();
                    match counts.iter_mut().find(|(t, _)| *t == target) {
                        Some((_, c)) => *c += 1,
                        None => counts.push((target.clone(), 1)),
                    }
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    // A dead target: the client sees its connection closed.
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                {
                    let mut live = live.lock().unwrap();
                    // Closed connections are forgotten as new ones come.
                    live.retain(|s| s.peer_addr().is_ok());
                    live.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        relay
    }

    /// Where new connections go from now on (connections open stay where they are).
    pub fn set_targets(&self, targets: &[&str]) {
        *self.targets.lock().unwrap() = targets
            .iter()
            .map(|t| t.trim_start_matches("tcp://").to_string())
            .collect();
    }

    /// Cuts every connection through the relay.
    pub fn cut(&self) {
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Connections relayed to `target` so far.
    pub fn connections_to(&self, target: &str) -> u64 {
        let target = target.trim_start_matches("tcp://");
        self.counts
            .lock()
            .unwrap()
            .iter()
            .find(|(t, _)| t == target)
            .map_or(0, |(_, c)| *c)
    }
}

/// SplitMix64's finaliser: a well-spread number from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn random_spread_is_scattered_yet_reaches_both_targets_within_three_connections() {
        let picks: Vec<usize> = (0..8).map(|n| Spread::Random.pick(n, 2)).collect();
        assert_eq!(picks, [1, 1, 0, 1, 0, 0, 0, 1]);
        let round: Vec<usize> = (0..4).map(|n| Spread::RoundRobin.pick(n, 2)).collect();
        assert_eq!(round, [0, 1, 0, 1]);
    }
}
