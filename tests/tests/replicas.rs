//! Replicas behind one address (issue 14): two real servers on one SoftHSM2 token behind a TCP
//! relay that spreads each new connection over them, as a Kubernetes Service without session
//! affinity does, under Fabric's signing pattern (8 threads). The application stays with the
//! instance it is on, moves once when that instance goes (rolling update, replica killed),
//! and never back and forth (DESIGN.md, "Shim semantics").
//!
//! The scenarios run one at a time (a lock), so that their figures are not each other's load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tests::fabric::{fabric_loop, make_token_key, Tally};
use tests::raw::RawModule;
use tests::relay::{Relay, Spread};
use tests::{private_copy, shim_path, with_env, ProxyServer, SoftHsm, TempDir};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const THREADS: usize = 8;

/// One application through the relay, logging to `dir/shim.log`.
fn client(address: &str, dir: &TempDir) -> RawModule {
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let log = dir.path().join("shim.log");
    let env = [
        ("PKCS11_PROXY_SOCKET", address),
        ("PKCS11_PROXY_LOG_FILE", log.to_str().unwrap()),
    ];
    assert_eq!(with_env(&env, || m.initialize()), cryptoki_sys::CKR_OK);
    m
}

/// How many times the application moved to another instance (each a replay).
fn switches(dir: &TempDir) -> usize {
    std::fs::read_to_string(dir.path().join("shim.log"))
        .unwrap_or_default()
        .matches("new server instance")
        .count()
}

/// What one run of the Fabric loop saw.
struct Run {
    signatures: u64,
    errors: u64,
    evictions: u64,
    longest_stall_ms: u64,
    switches: usize,
    codes: Vec<(&'static str, cryptoki_sys::CK_RV)>,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "signatures {}, errors {} (first: {:x?}), evictions {}, switches {}, longest stall {} ms",
            self.signatures,
            self.errors,
            &self.codes[..self.codes.len().min(8)],
            self.evictions,
            self.switches,
            self.longest_stall_ms
        )
    }
}

/// Runs Fabric's loop on `m` for `secs` seconds, with `during` run meanwhile (on this thread).
fn fabric_run(m: &RawModule, dir: &TempDir, secs: u64, during: impl FnOnce(Instant)) -> Run {
    let before = switches(dir);
    let start = Instant::now();
    let (mark, tally) = (AtomicU64::new(0), Tally::default());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            fabric_loop(
                m,
                THREADS,
                start + Duration::from_secs(secs),
                start,
                &mark,
                &tally,
            )
        });
        during(start);
    });
    Run {
        signatures: tally.ok.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        evictions: tally.evictions.load(Ordering::Relaxed),
        longest_stall_ms: tally.longest_stall_ms.load(Ordering::Relaxed),
        switches: switches(dir) - before,
        codes: tally.codes.into_inner().unwrap(),
    }
}

/// Sleeps until `at` after `start`.
fn at(start: Instant, at: Duration) {
    std::thread::sleep(at.saturating_sub(start.elapsed()));
}

/// The servers (of `servers`) that started a worker for an application: the probe worker
/// aside, each has one only if a connection of the application was handed to it.
fn serving(servers: &[&ProxyServer]) -> Vec<usize> {
    (0..servers.len())
        .filter(|&i| servers[i].workers().len() > 1)
        .collect()
}

#[test]
fn behind_one_address_spread_over_two_servers_the_application_stays_with_its_instance() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let hsm = SoftHsm::new("replicas");
    let (a, b) = (
        ProxyServer::start(&hsm, "tcp://127.0.0.1:0"),
        ProxyServer::start(&hsm, "tcp://127.0.0.1:0"),
    );
    // The reference: one server behind the same relay, in the same run.
    let alone = {
        let dir = TempDir::new("replicas-alone");
        let relay = Relay::start(&[&a.address], Spread::RoundRobin);
        let m = client(&relay.address, &dir);
        make_token_key(&m);
        fabric_run(&m, &dir, 8, |_| {})
    };
    println!("one server behind the relay: {alone}");
    assert_eq!((alone.errors, alone.switches), (0, 0), "{alone}");
    for spread in [Spread::RoundRobin, Spread::Random] {
        let dir = TempDir::new("replicas-two");
        let relay = Relay::start(&[&a.address, &b.address], spread);
        let m = client(&relay.address, &dir);
        let run = fabric_run(&m, &dir, 8, |_| {});
        println!(
            "two servers, {spread:?}: {run}; connections relayed {} and {}",
            relay.connections_to(&a.address),
            relay.connections_to(&b.address)
        );
        assert_eq!((run.errors, run.evictions), (0, 0), "{run}");
        assert!(run.switches <= 1, "{run}");
        assert!(
            run.signatures * 10 >= alone.signatures * 8,
            "{run} against {} alone",
            alone.signatures
        );
        // Connections that reached the other server were sent elsewhere by its router, which
        // started no worker for an application that is not on it.
        assert!(
            relay.connections_to(&a.address) > 0 && relay.connections_to(&b.address) > 0,
            "the relay spread the connections"
        );
        // SAFETY: no call of this module is in progress.
        unsafe { m.f().C_Finalize.unwrap()(std::ptr::null_mut()) };
    }
    // Each application of the two runs is on one server: at most one per server started a
    // worker beyond the probe's (finalised ones may be gone already).
    for server in [&a, &b] {
        assert!(server.workers().len() <= 3, "{:?}", server.workers());
    }
}

#[test]
fn a_rolling_update_behind_one_address_moves_the_application_once_without_errors() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let hsm = SoftHsm::new("rollingrelay");
    let dir = TempDir::new("rollingrelay");
    let mut old = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let relay = Relay::start(&[&old.address], Spread::RoundRobin);
    let m = client(&relay.address, &dir);
    make_token_key(&m);
    let mut new = None;
    let mut status = None;
    let run = fabric_run(&m, &dir, 8, |start| {
        // maxSurge 1: the new pod comes up and joins the Service...
        at(start, Duration::from_secs(2));
        let surge = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
        relay.set_targets(&[&old.address, &surge.address]);
        // ...then the old one is told to stop while the Service still sends to it for a
        // moment (endpoints are updated asynchronously).
        at(start, Duration::from_secs(4));
        status = old.stop();
        at(start, Duration::from_millis(4300));
        relay.set_targets(&[&surge.address]);
        new = Some(surge);
    });
    println!("rolling update behind one address: {run}");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!((run.errors, run.evictions), (0, 0), "{run}");
    assert_eq!(run.switches, 1, "{run}");
    assert!(run.longest_stall_ms < 1000, "{run}");
    assert_eq!(serving(&[new.as_ref().unwrap()]), vec![0]);
}

#[test]
fn a_replica_killed_behind_one_address_costs_one_move_and_no_error() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let hsm = SoftHsm::new("killrelay");
    let dir = TempDir::new("killrelay");
    let mut servers = [
        ProxyServer::start(&hsm, "tcp://127.0.0.1:0"),
        ProxyServer::start(&hsm, "tcp://127.0.0.1:0"),
    ];
    let relay = Relay::start(&[&servers[0].address, &servers[1].address], Spread::Random);
    let m = client(&relay.address, &dir);
    make_token_key(&m);
    // The application is on one server only: the other started no worker for it.
    let on = serving(&[&servers[0], &servers[1]]);
    assert_eq!(on.len(), 1, "{on:?}");
    let victim = on[0];
    let run = fabric_run(&m, &dir, 8, |start| {
        at(start, Duration::from_secs(3));
        // The relay keeps sending to the dead replica: its connections fail at once.
        servers[victim].kill();
    });
    println!("replica killed behind one address: {run}");
    assert_eq!((run.errors, run.evictions), (0, 0), "{run}");
    assert_eq!(run.switches, 1, "{run}");
    assert!(run.longest_stall_ms < 2000, "{run}");
    assert_eq!(serving(&[&servers[1 - victim]]), vec![0]);
}
