//! Nobody who is not a client can deny service (the real binary on loopback): connections
//! that never complete their handshake have a budget of their own (`--max-startups`,
//! `--max-startups-per-peer`, `--max-pending-applications`), so a real application still
//! initialises, logs in and signs while thousands are held; the metrics port serves probes
//! at once behind idle and slow clients; a probe storm costs the vendor library almost
//! nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use protocol::handshake::{routing_id, Prelude};
use tests::{proxy_context, ProxyServer, SoftHsm, TempDir, PIN};

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// One flood at a time: on two cores, two at once would measure each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Holds `n` idle TCP connections to `addr` (never a byte sent) from the one address `from`,
/// opening again each one the server drops, until `stop`.
fn hold_idle(
    from: [u8; 4],
    addr: String,
    n: usize,
    stop: Arc<AtomicBool>,
    reopened: Arc<AtomicUsize>,
) {
    let connect = || {
        let c = connect_from(from, &addr).ok()?;
        c.set_nonblocking(true).ok()?;
        Some(c)
    };
    let mut held: Vec<Option<TcpStream>> = (0..n).map(|_| connect()).collect();
    let mut byte = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        for slot in held.iter_mut() {
            let gone = match slot {
                Some(c) => {
                    matches!(c.read(&mut byte), Ok(0))
                        || matches!(c.read(&mut byte), Err(ref e) if e.kind() != std::io::ErrorKind::WouldBlock)
                }
                None => true,
            };
            if gone {
                *slot = connect();
                reopened.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Every 100 ms: the attacker shares this machine's two cores with the server, and a
        // tighter loop would measure the attacker's own CPU, not the server.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP connection to `addr` from the loopback address `from` (all of 127/8 is loopback).
fn connect_from(from: [u8; 4], addr: &str) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let to: std::net::SocketAddrV4 = addr.parse().expect("an IPv4 address");
    let sockaddr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, bound and connected with valid sockaddr_in structures; owned by
    // the TcpStream from then on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(from, 0);
        let remote = sockaddr(to.ip().octets(), to.port());
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0
            || libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// From its own loopback address, sends most of a routing prelude, a byte every 50 ms, and
/// never the rest; again on a new connection when the server closes it.
fn trickle(addr: String, seed: u8, stop: Arc<AtomicBool>) {
    let from = [127, 0, 1, seed];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = connect_from(from, &addr) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let prelude = Prelude {
            routing_id: routing_id(&[seed; 16]),
            ..Default::default()
        }
        .encode();
        for b in &prelude[..20] {
            if stop.load(Ordering::Relaxed) || c.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        hold_until_closed(&mut c, &stop);
    }
}

/// Waits until the server closes `c` or the test ends.
fn hold_until_closed(c: &mut TcpStream, stop: &AtomicBool) {
    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// From its own loopback address, as fast as it can: a whole routing prelude of a new
/// application each time (anyone can make one up), then nothing.
fn routing_flood(addr: String, seed: u8, stop: Arc<AtomicBool>, sent: Arc<AtomicUsize>) {
    let from = [127, 0, 2, seed];
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let Ok(mut c) = connect_from(from, &addr) else {
            continue;
        };
        let mut id = [seed; 16];
        id[..8].copy_from_slice(&n.to_le_bytes());
        let _ = c.write_all(
            &Prelude {
                routing_id: routing_id(&id),
                ..Default::default()
            }
            .encode(),
        );
        sent.fetch_add(1, Ordering::Relaxed);
        let _ = c.set_read_timeout(Some(Duration::from_millis(20)));
        let _ = c.read(&mut [0u8; 16]);
    }
}

#[test]
fn a_real_application_signs_while_thousands_of_connections_never_authenticate() {
    let _one = one_at_a_time();
    let hsm = SoftHsm::new("budget");
    let server = ProxyServer::start_with_metrics(&hsm);
    let metrics = server.metrics_address();
    let addr = server.address.trim_start_matches("tcp://").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let reopened = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let (a, s, r) = (addr.clone(), stop.clone(), reopened.clone());
        // From 127.0.0.2, not the application's address.
        attackers.push(std::thread::spawn(move || {
            hold_idle([127, 0, 0, 2], a, 1000, s, r)
        }));
    }
    for i in 0..200 {
        let (a, s) = (addr.clone(), stop.clone());
        attackers.push(std::thread::spawn(move || trickle(a, i as u8, s)));
    }
    // Let the flood build up: 4,000 idle connections and 200 trickling ones.
    std::thread::sleep(Duration::from_secs(3));

    let dir = TempDir::new("budget");
    let mut slowest = Duration::ZERO;
    let mut peak_rss = 0;
    for round in 0..3 {
        let started = Instant::now();
        let ctx = proxy_context(&server, dir.path());
        let slot = ctx.get_slots_with_token().unwrap()[0];
        let s = ctx.open_rw_session(slot).unwrap();
        s.login(UserType::User, Some(&AuthPin::new(PIN.into())))
            .unwrap();
        let ready = started.elapsed();
        let (_, private) = s
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[Attribute::EcParams(P256.to_vec()), Attribute::Token(false)],
                &[Attribute::Sign(true), Attribute::Token(false)],
            )
            .unwrap();
        // It keeps signing while the connections are held.
        let signing = Instant::now();
        let mut signatures = 0;
        while signing.elapsed() < Duration::from_secs(1) {
            let t = Instant::now();
            s.sign(&Mechanism::Ecdsa, private, &[0x42; 32]).unwrap();
            slowest = slowest.max(t.elapsed());
            signatures += 1;
        }
        peak_rss = peak_rss.max(server.tree_rss_kib());
        eprintln!(
            "round {round}: initialised and logged in in {} ms, {signatures} signatures in 1 s, server RSS {} MiB",
            ready.as_millis(),
            server.tree_rss_kib() / 1024
        );
        let m = scrape(&metrics);
        eprintln!(
            "  before their prelude: {} open, {} dropped, {} refused; workers {}, pending stopped {}",
            value(&m, "pkcs11_proxy_unauthenticated_connections"),
            value(&m, "pkcs11_proxy_unauthenticated_dropped_total"),
            value(&m, "pkcs11_proxy_unauthenticated_refused_total"),
            value(&m, "pkcs11_proxy_workers"),
            value(&m, "pkcs11_proxy_pending_workers_stopped_total"),
        );
        assert!(value(&m, "pkcs11_proxy_unauthenticated_connections") <= 1024);
        assert!(ready < Duration::from_secs(1), "round {round}: {ready:?}");
        assert!(signatures > 10, "round {round}: {signatures}");
        drop(s);
        ctx.finalize().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.join();
    }
    eprintln!(
        "slowest signature {} ms, {} idle connections re-opened after the server dropped them, peak RSS {} MiB",
        slowest.as_millis(),
        reopened.load(Ordering::Relaxed),
        peak_rss / 1024
    );
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    // The flood was real: the server refused the address's connections beyond its share,
    // and they came back.
    let m = scrape(&metrics);
    assert!(reopened.load(Ordering::Relaxed) > 1000);
    assert!(value(&m, "pkcs11_proxy_unauthenticated_refused_total") > 1000);
    // Bounded: the router's threads for 1,024 connections before their prelude and at most
    // 16 workers for routing ids no hello followed, beside the real application's.
    assert!(peak_rss < 800 * 1024, "{} MiB", peak_rss / 1024);
    assert!(server.log_contains("connections that had not completed their routing prelude"));
}

/// One application's first steps through the shim (initialise, log in, make a key, sign):
/// how long they took.
fn first_signature(server: &ProxyServer, dir: &TempDir) -> Duration {
    let started = Instant::now();
    let ctx = proxy_context(server, dir.path());
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::new(PIN.into())))
        .unwrap();
    let (_, private) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::EcParams(P256.to_vec()), Attribute::Token(false)],
            &[Attribute::Sign(true), Attribute::Token(false)],
        )
        .unwrap();
    s.sign(&Mechanism::Ecdsa, private, &[0x42; 32]).unwrap();
    let took = started.elapsed();
    drop(s);
    ctx.finalize().unwrap();
    took
}

/// Clients behind one NAT or one service-mesh sidecar share their address with whatever
/// floods from it: the address's idle connections make room for a client that talks.
#[test]
fn clients_that_share_the_address_of_a_flood_of_idle_connections_are_served() {
    let _one = one_at_a_time();
    let hsm = SoftHsm::new("shared");
    let server = ProxyServer::start_with_metrics(&hsm);
    let metrics = server.metrics_address();
    let addr = server.address.trim_start_matches("tcp://").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let reopened = Arc::new(AtomicUsize::new(0));
    // 4,500 idle connections from 127.0.0.1, the application's own address.
    let attackers: Vec<_> = (0..3)
        .map(|_| {
            let (a, s, r) = (addr.clone(), stop.clone(), reopened.clone());
            std::thread::spawn(move || hold_idle([127, 0, 0, 1], a, 1500, s, r))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let dir = TempDir::new("shared");
    let rounds: Vec<Duration> = (0..3).map(|_| first_signature(&server, &dir)).collect();
    let m = scrape(&metrics);
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.join();
    }
    eprintln!(
        "4,500 idle connections from the clients' own address: 3 clients signed after {:?} ms; {} idle ones re-opened, {} refused, {} dropped",
        rounds.iter().map(Duration::as_millis).collect::<Vec<_>>(),
        reopened.load(Ordering::Relaxed),
        value(&m, "pkcs11_proxy_unauthenticated_refused_total"),
        value(&m, "pkcs11_proxy_unauthenticated_dropped_total"),
    );
    for took in &rounds {
        assert!(*took < Duration::from_secs(5), "{rounds:?}");
    }
    // The flood was real: the address was over its share all along.
    assert!(value(&m, "pkcs11_proxy_unauthenticated_refused_total") > 1000);
}

#[test]
fn a_flood_of_made_up_applications_starts_few_workers_and_stops_no_real_one() {
    let _one = one_at_a_time();
    let hsm = SoftHsm::new("flood");
    let server = ProxyServer::start_with_metrics(&hsm);
    let metrics = server.metrics_address();
    let addr = server.address.trim_start_matches("tcp://").to_string();
    // A real application, authenticated before the flood.
    let dir = TempDir::new("flood");
    let ctx = proxy_context(&server, dir.path());
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::new(PIN.into())))
        .unwrap();
    let (_, private) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::EcParams(P256.to_vec()), Attribute::Token(false)],
            &[Attribute::Sign(true), Attribute::Token(false)],
        )
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..8)
        .map(|i| {
            let (a, st, n) = (addr.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || routing_flood(a, i, st, n))
        })
        .collect();
    let started = Instant::now();
    let (mut signatures, mut slowest, mut peak_workers, mut peak_rss) = (0, Duration::ZERO, 0, 0);
    while started.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        s.sign(&Mechanism::Ecdsa, private, &[0x42; 32]).unwrap();
        slowest = slowest.max(t.elapsed());
        signatures += 1;
        if signatures % 200 == 0 {
            peak_workers = peak_workers.max(value(&scrape(&metrics), "pkcs11_proxy_workers"));
            peak_rss = peak_rss.max(server.tree_rss_kib());
        }
    }
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.join().unwrap();
    }
    let m = scrape(&metrics);
    eprintln!(
        "{} made-up applications in 4 s: {} workers at most, {} pending workers stopped, {} refused; the real one signed {signatures} times, slowest {} ms, peak RSS {} MiB",
        sent.load(Ordering::Relaxed),
        peak_workers,
        value(&m, "pkcs11_proxy_pending_workers_stopped_total"),
        value(&m, "pkcs11_proxy_pending_workers_refused_total"),
        slowest.as_millis(),
        peak_rss / 1024
    );
    assert!(sent.load(Ordering::Relaxed) > 200);
    // The probe, the real application, at most --max-pending-applications (16) others, and
    // the few stopped to make room that are still exiting.
    assert!(peak_workers <= 2 + 16 + 4, "{peak_workers}");
    assert!(value(&m, "pkcs11_proxy_pending_workers_refused_total") > 0);
    assert!(signatures > 100, "{signatures}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert!(peak_rss < 600 * 1024, "{} MiB", peak_rss / 1024);
}

#[test]
fn new_applications_beyond_the_pending_budget_are_told_to_try_again_and_get_in() {
    let _one = one_at_a_time();
    let hsm = SoftHsm::new("burst");
    let server = ProxyServer::start_tcp_with(
        &hsm,
        &[
            "--max-pending-applications",
            "2",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = server.metrics_address();
    // Eight applications start at once: two may wait for their hello at a time, the others
    // are told the server is busy, try again, and get in.
    let dir = Arc::new(TempDir::new("burst"));
    let modules: Vec<tests::raw::RawModule> = (0..8)
        .map(|_| tests::raw::RawModule::load(&tests::private_copy(&tests::shim_path(), dir.path())))
        .collect();
    // The environment is set once, for all eight C_Initialize calls at the same moment.
    let rvs = tests::with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || {
        std::thread::scope(|scope| {
            let starts: Vec<_> = modules
                .iter()
                .map(|m| scope.spawn(move || m.initialize()))
                .collect();
            starts
                .into_iter()
                .map(|s| s.join().unwrap())
                .collect::<Vec<_>>()
        })
    });
    assert!(rvs.iter().all(|rv| *rv == cryptoki_sys::CKR_OK), "{rvs:x?}");
    let told = value(
        &scrape(&metrics),
        "pkcs11_proxy_pending_workers_refused_total",
    );
    eprintln!("8 applications at once, 2 pending at a time: {told} told to try again, all in");
    assert!(told > 0, "the burst never exceeded the pending budget");
}

/// Whether `c` (after a raw hello) was accepted: its welcome's status is 0.
fn accepted(c: &mut TcpStream) -> bool {
    let mut answers = [0u8; tests::ANSWERS_LEN];
    c.read_exact(&mut answers).is_ok()
        && answers[protocol::handshake::ROUTE_ANSWER_LEN + 4 + 10] == 0
}

#[test]
fn connections_that_know_a_routing_id_but_not_the_hello_never_take_an_applications_places() {
    let _one = one_at_a_time();
    let hsm = SoftHsm::new("prehello");
    let server = ProxyServer::start_tcp_with(&hsm, &["--max-connections", "8"]);
    let addr = server.address.trim_start_matches("tcp://").to_string();
    let client_id = [9u8; 16];
    // The application is served.
    let mut first = tests::raw_hello(&server.address, client_id);
    assert!(accepted(&mut first));
    // Someone who saw its routing id on the wire (it travels in clear) opens 300 connections
    // to its worker and never sends a hello.
    let prelude = Prelude {
        routing_id: routing_id(&client_id),
        ..Default::default()
    }
    .encode();
    let squatters: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut c = connect_from([127, 0, 3, 1], &addr).unwrap();
            c.write_all(&prelude).unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The application's own connections, up to its --max-connections of 8, are all accepted:
    // the squatters count against neither the limit nor its budget before the hello (they
    // are dropped, oldest first, to make room).
    let mut mine: Vec<TcpStream> = (0..7)
        .map(|_| tests::raw_hello(&server.address, client_id))
        .collect();
    for c in &mut mine {
        assert!(accepted(c), "an authenticated connection was refused");
    }
    // Its ninth is over its own limit.
    let mut over = tests::raw_hello(&server.address, client_id);
    assert!(
        !accepted(&mut over),
        "the limit counts authenticated connections"
    );
    let dropped = squatters
        .into_iter()
        .filter(|c| {
            // The route answer first, then the end of the stream if it was dropped.
            let mut c = c.try_clone().unwrap();
            c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut buf = [0u8; 64];
            loop {
                match c.read(&mut buf) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        })
        .count();
    eprintln!("{dropped} of 300 connections without a hello were dropped to make room");
    // The worker's budget before the hello is --max-connections (8) here.
    assert!(dropped >= 300 - 8, "{dropped}");
}

/// The whole `/metrics` text.
fn scrape(metrics: &str) -> String {
    let mut c = TcpStream::connect(metrics).unwrap();
    write!(c, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text
}

/// The value of metric `name` (no labels).
fn value(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name}"))
}

/// GET `path` on a new connection; the status line and how long it took.
fn get(addr: &str, path: &str) -> (String, Duration) {
    let t = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    (text.lines().next().unwrap_or("").to_string(), t.elapsed())
}

#[test]
fn probes_answer_at_once_behind_idle_and_slow_clients_and_a_storm_costs_the_vendor_nothing() {
    let _one = one_at_a_time();
    let hsm = SoftHsm::new("probes");
    let server = ProxyServer::start_with_metrics(&hsm);
    let metrics = server.metrics_address();
    // 200 idle connections and 50 scrapers that never read their answer.
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(TcpStream::connect(&metrics).unwrap());
    }
    for _ in 0..50 {
        let mut c = TcpStream::connect(&metrics).unwrap();
        write!(c, "GET /metrics HTTP/1.1\r\nHost: slow\r\n\r\n").unwrap();
        held.push(c);
    }
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        for path in ["/healthz", "/readyz"] {
            let (status, took) = get(&metrics, path);
            assert!(status.contains("200"), "{path}: {status}");
            slowest = slowest.max(took);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "slowest probe behind 250 idle or slow clients: {} ms",
        slowest.as_millis()
    );
    assert!(slowest < Duration::from_millis(100), "{slowest:?}");
    let (status, _) = get(&metrics, "/metrics");
    assert!(status.contains("200"), "{status}");
    drop(held);

    // 1,000 /readyz in about a second, from 8 threads.
    let checks = |text: &str| value(text, "pkcs11_proxy_readiness_checks_total");
    let before = checks(&scrape(&metrics));
    let started = Instant::now();
    let storm: Vec<_> = (0..8)
        .map(|_| {
            let m = metrics.clone();
            std::thread::spawn(move || {
                for _ in 0..125 {
                    let (status, _) = get(&m, "/readyz");
                    assert!(status.contains("200"), "{status}");
                    std::thread::sleep(Duration::from_millis(7));
                }
            })
        })
        .collect();
    for t in storm {
        t.join().unwrap();
    }
    let took = started.elapsed();
    let vendor_checks = checks(&scrape(&metrics)) - before;
    eprintln!(
        "1,000 /readyz in {} ms: {vendor_checks} readiness checks reached the vendor library",
        took.as_millis()
    );
    // One a second at most, plus the one in progress at the edges and the scrape's own
    // (a scrape checks too, for the gauge of the tokens that answer).
    assert!(
        vendor_checks <= took.as_secs() + 3,
        "{vendor_checks} checks in {took:?}"
    );
}
