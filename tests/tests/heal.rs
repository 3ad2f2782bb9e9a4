//! Healing what the HSM breaks (DESIGN.md, "Healing the HSM side"), with `tests/c/outage_module.c`:
//! SoftHSM2 behind a network HSM client's failure model (every call CKR_DEVICE_ERROR while the
//! HSM is down, and the instance that saw it broken until C_Finalize and C_Initialize).
//!
//! The same Fabric signing load (pooled sessions, the key handle found once and cached, a
//! session evicted only on a 0xB* code) runs through the proxy, through a proxy with
//! `--heal off`, and loaded directly, across one outage: through the proxy it signs again soon
//! after the HSM is back, on the same sessions and key handle; the others never do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use tests::fabric::{find_signing_key, make_token_key, open_pooled_session, sign_with_key, KEY_ID};
use tests::raw::RawModule;
use tests::{
    build_c_module, build_go_fabric, children_of, http_get, private_copy, proxy_client, with_env,
    GoLoop, ProxyServer, SoftHsm, TempDir,
};

/// Buckets of the timeline, each this long.
const BUCKET_MS: u64 = 250;
const BUCKETS: usize = 64;

/// What one signing load saw, by time since its start.
struct Timeline {
    start: Instant,
    ok: [AtomicU64; BUCKETS],
    errors: [AtomicU64; BUCKETS],
    /// Sessions dropped on a 0xB* answer (Fabric's eviction) and key handles found again.
    evictions: AtomicU64,
    refinds: AtomicU64,
    codes: Mutex<BTreeMap<CK_RV, u64>>,
}

impl Timeline {
    fn new(start: Instant) -> Self {
        Self {
            start,
            ok: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            evictions: AtomicU64::new(0),
            refinds: AtomicU64::new(0),
            codes: Mutex::new(BTreeMap::new()),
        }
    }

    fn bucket(&self) -> usize {
        ((self.start.elapsed().as_millis() as u64 / BUCKET_MS) as usize).min(BUCKETS - 1)
    }

    fn record(&self, rv: CK_RV) {
        if rv == CKR_OK {
            self.ok[self.bucket()].fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors[self.bucket()].fetch_add(1, Ordering::Relaxed);
            *self.codes.lock().unwrap().entry(rv).or_default() += 1;
        }
    }

    fn sum(counts: &[AtomicU64; BUCKETS], from_ms: u64, to_ms: u64) -> u64 {
        let (a, b) = ((from_ms / BUCKET_MS) as usize, (to_ms / BUCKET_MS) as usize);
        counts[a..b.min(BUCKETS)]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn ok_between(&self, from_ms: u64, to_ms: u64) -> u64 {
        Self::sum(&self.ok, from_ms, to_ms)
    }

    fn errors_between(&self, from_ms: u64, to_ms: u64) -> u64 {
        Self::sum(&self.errors, from_ms, to_ms)
    }

    /// Signatures and errors per second, for the report.
    fn per_second(&self, seconds: u64) -> String {
        (0..seconds)
            .map(|s| {
                format!(
                    "{s}s: {} ok/{} err",
                    self.ok_between(s * 1000, (s + 1) * 1000),
                    self.errors_between(s * 1000, (s + 1) * 1000)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A session for Fabric's pool, logged in (CKR_USER_ALREADY_LOGGED_IN accepted); the
/// module's answer when it refuses.
fn fabric_session(m: &RawModule) -> Result<CK_SESSION_HANDLE, CK_RV> {
    match open_pooled_session(m)? {
        (s, CKR_OK | CKR_USER_ALREADY_LOGGED_IN) => Ok(s),
        (_, rv) => Err(rv),
    }
}

/// A [`fabric_session`] before the outage. SoftHSM2 answers concurrent logins from several
/// processes on one token with CKR_GENERAL_ERROR at times: tried again.
fn session_before_the_outage(m: &RawModule) -> CK_SESSION_HANDLE {
    for _ in 0..50 {
        if let Ok(s) = fabric_session(m) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no session before the outage")
}

/// Fabric's signing load on `m` from `threads` threads until `until`: each thread keeps its
/// pooled session and the key handle it found once; a 0xB* answer evicts the session, an
/// invalid key handle makes it find the key again.
fn sign_until(m: &RawModule, threads: usize, until: Instant, t: &Timeline) {
    // Logged in once first, as Fabric does at start.
    session_before_the_outage(m);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut session = session_before_the_outage(m);
                // SAFETY: an open, logged-in session.
                let mut key = unsafe { find_signing_key(m, session, KEY_ID) }.expect("the key");
                while Instant::now() < until {
                    // SAFETY: the session and key may be stale; that is the point.
                    let rv = unsafe { sign_with_key(m, session, key, &[7u8; 32]) };
                    t.record(rv);
                    match rv {
                        CKR_OK => {}
                        0xB0..=0xBF => {
                            t.evictions.fetch_add(1, Ordering::Relaxed);
                            // SAFETY: closing a stale handle is harmless.
                            unsafe { m.f().C_CloseSession.unwrap()(session) };
                            while Instant::now() < until {
                                match fabric_session(m) {
                                    Ok(s) => {
                                        session = s;
                                        break;
                                    }
                                    Err(rv) => t.record(rv),
                                }
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                        CKR_KEY_HANDLE_INVALID | CKR_OBJECT_HANDLE_INVALID => {
                            t.refinds.fetch_add(1, Ordering::Relaxed);
                            // SAFETY: as above.
                            if let Ok(k) = unsafe { find_signing_key(m, session, KEY_ID) } {
                                key = k;
                            }
                        }
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
    });
}

/// The HSM of `tests/c/outage_module.c`: down while its file exists.
struct Hsm {
    down: PathBuf,
}

impl Hsm {
    fn new(dir: &TempDir) -> Self {
        Self {
            down: dir.path().join("hsm-down"),
        }
    }

    fn fail(&self) {
        std::fs::write(&self.down, b"").unwrap();
    }

    fn recover(&self) {
        std::fs::remove_file(&self.down).unwrap();
    }

    fn path(&self) -> &str {
        self.down.to_str().unwrap()
    }
}

/// A server on `module` (the outage module) with `flags` and the module's `env`.
fn server(hsm: &SoftHsm, module: &Path, flags: &[&str], env: &[(&str, &str)]) -> ProxyServer {
    let mut args = vec![
        "--module",
        module.to_str().unwrap(),
        "--listen",
        "tcp://127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(flags);
    ProxyServer::start_with(hsm, &args, env)
}

/// The vendor instances `server` replaced as broken, by reason.
fn reinitialisations(server: &ProxyServer) -> BTreeMap<String, u64> {
    by_reason(server, "pkcs11_proxy_vendor_reinitialisations")
}

/// The counter `family` of `server`, by reason.
fn by_reason(server: &ProxyServer, family: &str) -> BTreeMap<String, u64> {
    let (_, body) = http_get(&server.metrics_address(), "/metrics");
    body.lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| {
            let reason = l.split("reason=\"").nth(1)?.split('"').next()?;
            let n = l.rsplit(' ').next()?.parse().ok()?;
            Some((reason.to_string(), n))
        })
        .collect()
}

/// Whether each token answers, by label, as `server`'s readiness probe sees it now.
fn reachable(server: &ProxyServer) -> BTreeMap<String, u64> {
    let (_, body) = http_get(&server.metrics_address(), "/metrics");
    body.lines()
        .filter(|l| l.starts_with("pkcs11_proxy_hsm_reachable{"))
        .filter_map(|l| {
            let token = l.split("token=\"").nth(1)?.split('"').next()?;
            let n = l.rsplit(' ').next()?.parse().ok()?;
            Some((token.to_string(), n))
        })
        .collect()
}

/// The module loaded directly by this process, with its own SoftHSM2 copy, initialised.
fn direct(hsm: &SoftHsm, module: &Path, env: &[(&str, &str)]) -> RawModule {
    let conf = hsm.conf.to_string_lossy().into_owned();
    let softhsm = hsm.module_copy();
    let mut vars = vec![
        ("SOFTHSM2_CONF", conf.as_str()),
        ("OUTAGE_MODULE", softhsm.to_str().unwrap()),
    ];
    vars.extend_from_slice(env);
    let dir = module.parent().unwrap();
    with_env(&vars, || {
        let m = RawModule::load(&private_copy(module, dir));
        assert_eq!(m.initialize(), CKR_OK);
        m
    })
}

/// The outage's timeline (milliseconds from the start of the load).
const DOWN_MS: u64 = 2000;
const BACK_MS: u64 = 5000;
const END_MS: u64 = 9000;

/// Runs `loads` (each a module and its thread count) across one outage of `hsm`, until
/// `end_ms`, `during` one second into the outage; their timelines.
fn across_an_outage(
    hsm: &Hsm,
    loads: &[(&RawModule, usize)],
    end_ms: u64,
    during: &dyn Fn(),
) -> Vec<Timeline> {
    let start = Instant::now();
    let timelines: Vec<Timeline> = loads.iter().map(|_| Timeline::new(start)).collect();
    let until = start + Duration::from_millis(end_ms);
    std::thread::scope(|scope| {
        for ((m, threads), t) in loads.iter().zip(&timelines) {
            scope.spawn(move || sign_until(m, *threads, until, t));
        }
        std::thread::sleep(Duration::from_millis(DOWN_MS));
        hsm.fail();
        std::thread::sleep(Duration::from_millis(1000));
        during();
        let back = start + Duration::from_millis(BACK_MS);
        std::thread::sleep(back.saturating_duration_since(Instant::now()));
        hsm.recover();
    });
    timelines
}

#[test]
fn an_hsm_outage_is_healed_through_the_proxy_and_never_when_loaded_directly() {
    let softhsm = SoftHsm::new("heal");
    let dir = TempDir::new("heal");
    let module = build_c_module("outage_module", &dir);
    let hsm = Hsm::new(&dir);
    let env = [("OUTAGE_FILE", hsm.path())];
    let healing = server(&softhsm, &module, &[], &env);
    let faithful = server(&softhsm, &module, &["--heal", "off"], &env);
    let proxy = proxy_client(&healing.address, &dir);
    make_token_key(&proxy);
    let strict = proxy_client(&faithful.address, &dir);
    let loaded = direct(&softhsm, &module, &env);

    // Readiness follows the HSM: down during the outage, up after it, although the probe's
    // own instance was broken by it too.
    let ready = |server: &ProxyServer| http_get(&server.metrics_address(), "/readyz").0;
    let ready_during = Mutex::new(Vec::new());
    // And the gauge of the tokens that answer, by label.
    let label = softhsm.label.as_str();
    assert_eq!(reachable(&healing), [(label.to_string(), 1)].into());
    let reachable_during = Mutex::new(BTreeMap::new());
    let during = || {
        *ready_during.lock().unwrap() = vec![ready(&healing), ready(&faithful)];
        *reachable_during.lock().unwrap() = reachable(&healing);
    };
    let loads = [(&proxy, 8), (&strict, 4), (&loaded, 4)];
    let [through, off, directly]: [Timeline; 3] = across_an_outage(&hsm, &loads, END_MS, &during)
        .try_into()
        .ok()
        .unwrap();
    let replaced = reinitialisations(&healing);
    for (name, t) in [
        ("through the proxy", &through),
        ("--heal off", &off),
        ("directly", &directly),
    ] {
        println!(
            "{name}: {}; evictions {}, key handles found again {}, codes {:?}",
            t.per_second(END_MS / 1000),
            t.evictions.load(Ordering::Relaxed),
            t.refinds.load(Ordering::Relaxed),
            t.codes.lock().unwrap()
        );
    }
    println!("vendor instances replaced: {replaced:?}");

    // Every load signed before the outage, and saw it, with the vendor's own code.
    for t in [&through, &off, &directly] {
        assert!(t.ok_between(0, DOWN_MS) > 0);
        assert!(t.errors_between(DOWN_MS, BACK_MS) > 0);
        assert_eq!(
            t.codes.lock().unwrap().keys().collect::<Vec<_>>(),
            [&CKR_DEVICE_ERROR]
        );
    }
    // Through the proxy: no error from 2 s after the HSM is back, signing on the same
    // sessions and key handles (nothing evicted, nothing found again).
    assert_eq!(through.errors_between(BACK_MS + 2000, END_MS), 0);
    assert!(through.ok_between(BACK_MS + 2000, END_MS) > 0);
    assert_eq!(through.evictions.load(Ordering::Relaxed), 0);
    assert_eq!(through.refinds.load(Ordering::Relaxed), 0);
    // The negative controls: the broken instance never signs again.
    assert_eq!(directly.ok_between(BACK_MS, END_MS), 0);
    assert_eq!(off.ok_between(BACK_MS, END_MS), 0);
    // Replaced with backoff (at once, then after 0.5, 1, 2 s...), not once per call.
    let n = replaced.get("device_error").copied().unwrap_or(0);
    assert!((2..=8).contains(&n), "{replaced:?}");
    assert_eq!(
        reinitialisations(&faithful).values().sum::<u64>(),
        0,
        "--heal off replaces nothing"
    );
    assert!(healing.log_contains("HSM outage over"));
    let ok = "HTTP/1.1 200 OK";
    assert!(ready_during.lock().unwrap().iter().all(|r| r != ok));
    assert_eq!(ready(&healing), ok);
    assert_eq!(
        *reachable_during.lock().unwrap(),
        [(label.to_string(), 0)].into()
    );
    assert_eq!(reachable(&healing), [(label.to_string(), 1)].into());
    assert_ne!(ready(&faithful), ok, "--heal off: as the vendor left it");
}

#[test]
fn a_client_that_says_not_initialized_and_a_token_that_went_away_are_healed_too() {
    let softhsm = SoftHsm::new("healcodes");
    let dir = TempDir::new("healcodes");
    let module = build_c_module("outage_module", &dir);
    let hsm = Hsm::new(&dir);
    // The client says CKR_CRYPTOKI_NOT_INITIALIZED (0x190) when it lost its HSM.
    let not_initialized = server(
        &softhsm,
        &module,
        &[],
        &[("OUTAGE_FILE", hsm.path()), ("OUTAGE_CODE", "0x190")],
    );
    // The token leaves its slot (CKR_TOKEN_NOT_PRESENT) and the instance stays so.
    let token_gone = server(
        &softhsm,
        &module,
        &[],
        &[("OUTAGE_FILE", hsm.path()), ("OUTAGE_CODE", "0xE0")],
    );
    let a = proxy_client(&not_initialized.address, &dir);
    make_token_key(&a);
    let b = proxy_client(&token_gone.address, &dir);
    let [ta, tb]: [Timeline; 2] = across_an_outage(&hsm, &[(&a, 2), (&b, 2)], END_MS, &|| {})
        .try_into()
        .ok()
        .unwrap();
    for (name, t, server, reason) in [
        ("not initialised", &ta, &not_initialized, "not_initialized"),
        ("token gone", &tb, &token_gone, "token_not_present"),
    ] {
        let replaced = reinitialisations(server);
        println!(
            "{name}: {}; codes {:?}; replaced {replaced:?}",
            t.per_second(END_MS / 1000),
            t.codes.lock().unwrap()
        );
        assert!(t.errors_between(DOWN_MS, BACK_MS) > 0, "{name}");
        assert_eq!(t.errors_between(BACK_MS + 2000, END_MS), 0, "{name}");
        assert!(t.ok_between(BACK_MS + 2000, END_MS) > 0, "{name}");
        assert_eq!(t.evictions.load(Ordering::Relaxed), 0, "{name}");
        assert!(
            replaced.get(reason).is_some_and(|n| *n > 0),
            "{name}: {replaced:?}"
        );
    }
}

#[test]
fn fifty_applications_through_one_outage_make_a_bounded_number_of_new_instances() {
    let softhsm = SoftHsm::new("heal50");
    let dir = TempDir::new("heal50");
    let module = build_c_module("outage_module", &dir);
    let hsm = Hsm::new(&dir);
    let healing = server(&softhsm, &module, &[], &[("OUTAGE_FILE", hsm.path())]);
    let apps: Vec<RawModule> = (0..50)
        .map(|_| proxy_client(&healing.address, &dir))
        .collect();
    make_token_key(&apps[0]);
    // Logged in one after the other (SoftHSM2 copes badly with fifty processes logging in on
    // one token at once), as fifty nodes started over time would be.
    for m in &apps {
        session_before_the_outage(m);
    }
    let loads: Vec<(&RawModule, usize)> = apps.iter().map(|m| (m, 1)).collect();
    // Longer than the others: a new instance that comes up broken after the outage (SoftHSM2
    // with fifty processes starting on one token at once at times answers
    // CKR_TOKEN_NOT_RECOGNIZED) is replaced after its backoff step.
    let end_ms = 16_000;
    let timelines = across_an_outage(&hsm, &loads, end_ms, &|| {});
    let replaced = reinitialisations(&healing);
    let n: u64 = replaced.values().sum();
    let healed = timelines
        .iter()
        .filter(|t| t.errors_between(BACK_MS + 2000, end_ms) == 0)
        .count();
    let errors: u64 = timelines.iter().map(|t| t.errors_between(0, end_ms)).sum();
    println!(
        "50 applications: {n} vendor instances replaced ({:.1} each: {replaced:?}), {errors} errors in all, {healed} without error from 2 s after the HSM is back",
        n as f64 / 50.0
    );
    let signing_at_the_end = timelines
        .iter()
        .filter(|t| t.ok_between(end_ms - 1000, end_ms) > 0)
        .count();
    assert_eq!(signing_at_the_end, 50);
    // Each application's instance is replaced at once, then after 0.5, 1 and 2 s while the
    // HSM stays down: a few each, not one per call.
    assert!((50..=50 * 6).contains(&n), "{replaced:?}");
}

#[test]
fn fabrics_go_binding_signs_again_after_an_hsm_outage() {
    let softhsm = SoftHsm::new("healgo");
    let dir = TempDir::new("healgo");
    let module = build_c_module("outage_module", &dir);
    let hsm = Hsm::new(&dir);
    let healing = server(&softhsm, &module, &[], &[("OUTAGE_FILE", hsm.path())]);
    let program = build_go_fabric(dir.path());
    let go = GoLoop::start(&program, dir.path(), &softhsm.label, &healing.address, 8000);
    std::thread::sleep(Duration::from_millis(1000));
    hsm.fail();
    std::thread::sleep(Duration::from_millis(3000));
    hsm.recover();
    let out = go.finish();
    println!("go/miekg across an HSM outage: {}", out.summary);
    let (count, rest, summary) = (|key: &str| out.count(key), &out.lines, &out.summary);
    // The outage was seen (with the vendor's code), and ended for the application within
    // 2 s of the HSM's return (4 s into the loop), on the same sessions.
    assert!(count("errors") > 0, "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("CKR_DEVICE_ERROR")),
        "{rest:?}"
    );
    assert!(count("last_error_ms") < 4000 + 2000, "{summary}");
    assert_eq!(count("evictions"), 0, "{rest:?}");
    assert!(count("late") > 0, "signing at the end");
}

#[test]
fn a_hung_call_is_abandoned_at_its_deadline_and_only_its_application_notices() {
    let softhsm = SoftHsm::new("hang");
    let dir = TempDir::new("hang");
    let module = build_c_module("outage_module", &dir);
    let hang = dir.path().join("hang");
    let env = [
        ("HANG_FILE", hang.to_str().unwrap()),
        ("HANG_SECONDS", "30"),
    ];
    let proxy = server(&softhsm, &module, &["--call-deadline", "2"], &env);
    let app = proxy_client(&proxy.address, &dir);
    make_token_key(&app);
    let sessions: Vec<CK_SESSION_HANDLE> =
        (0..4).map(|_| session_before_the_outage(&app)).collect();
    // SAFETY: an open, logged-in session.
    let key = unsafe { find_signing_key(&app, sessions[0], KEY_ID) }.expect("the key");
    let sign = |session, data: &[u8]| unsafe { sign_with_key(&app, session, key, data) };
    assert_eq!(sign(sessions[0], &[7; 32]), CKR_OK);
    // A second application, Fabric's Go binding, signs all along on the same HSM.
    let program = build_go_fabric(dir.path());
    let go = GoLoop::start(&program, dir.path(), &softhsm.label, &proxy.address, 7000);
    let workers_before = children_of(proxy.pid());

    // The HSM client hangs on the calls of four threads of the first application: each
    // gets CKR_DEVICE_ERROR at the deadline (2 s), not after the 30 s the vendor takes.
    std::fs::write(&hang, b"").unwrap();
    let waits: Vec<(CK_RV, Duration)> = std::thread::scope(|scope| {
        let calls: Vec<_> = sessions
            .iter()
            .map(|&s| {
                scope.spawn(move || {
                    let started = Instant::now();
                    (
                        sign(s, b"hang: a call the HSM never answers"),
                        started.elapsed(),
                    )
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    println!("hung calls: {waits:?}");
    for (rv, waited) in &waits {
        assert_eq!(*rv, CKR_DEVICE_ERROR);
        assert!(
            (Duration::from_secs(2)..Duration::from_secs(3)).contains(waited),
            "{waited:?}"
        );
    }
    // Signing resumes on a new vendor instance, on the same sessions and key handle.
    let resumed = Instant::now();
    for &s in &sessions {
        assert_eq!(sign(s, &[7; 32]), CKR_OK);
    }
    println!("signing again {:?} after the answers", resumed.elapsed());
    assert!(resumed.elapsed() < Duration::from_secs(1));

    // The other application never noticed: no error, no signature slower than a second.
    let out = go.finish();
    println!("the other application meanwhile: {}", out.summary);
    assert_eq!(out.count("errors"), 0, "{:?}", out.lines);
    assert!(out.count("slowest_ms") < 1000, "{}", out.summary);
    // The worker stuck in the vendor is gone (at once, not after the vendor's 30 s); the
    // other application's worker is the one it was.
    let workers_after = children_of(proxy.pid());
    let gone: Vec<_> = workers_before
        .iter()
        .filter(|p| !workers_after.contains(p))
        .collect();
    assert_eq!(gone.len(), 1, "{workers_before:?} then {workers_after:?}");
    assert_eq!(workers_after.len(), workers_before.len());
    // Counted: four calls abandoned, one instance replaced.
    let abandoned = by_reason(&proxy, "pkcs11_proxy_abandoned_calls");
    assert_eq!(abandoned.get("call_deadline"), Some(&4), "{abandoned:?}");
    assert_eq!(abandoned.get("slow_call_deadline"), Some(&0));
    assert_eq!(reinitialisations(&proxy).get("hung_call"), Some(&1));
    assert!(proxy.log_contains("outlived its deadline"));
    assert!(proxy.log_contains("exiting without finalising"));
}

#[test]
fn a_c_initialize_that_hangs_is_abandoned_and_leaves_no_worker_behind() {
    let softhsm = SoftHsm::new("inithang");
    let dir = TempDir::new("inithang");
    let module = build_c_module("outage_module", &dir);
    let hang = dir.path().join("init-hang");
    let env = [
        ("INIT_HANG_FILE", hang.to_str().unwrap()),
        ("HANG_SECONDS", "30"),
    ];
    let proxy = server(&softhsm, &module, &["--call-deadline", "2"], &env);
    let probe_only = children_of(proxy.pid());
    // The HSM client cannot reach its HSM at start: its C_Initialize sleeps 30 s.
    std::fs::write(&hang, b"").unwrap();
    let m = RawModule::load(&private_copy(&tests::shim_path(), dir.path()));
    let vars = [
        ("PKCS11_PROXY_SOCKET", proxy.address.as_str()),
        ("PKCS11_PROXY_CONNECT_TIMEOUT_MS", "1000"),
    ];
    let started = Instant::now();
    let rv = with_env(&vars, || m.initialize());
    println!(
        "C_Initialize while the vendor's hangs: {rv:#x} after {:?}",
        started.elapsed()
    );
    // The deadline's answer, CKR_DEVICE_ERROR, given at 2 s to the hellos waiting for the
    // vendor's C_Initialize, or the shim's own bound on a welcome (its connect timeout, 1 s
    // per attempt), whichever comes first: never the vendor's 30 s.
    assert!(
        [CKR_DEVICE_ERROR, CKR_FUNCTION_FAILED].contains(&rv),
        "{rv:#x}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // The server abandons the vendor's C_Initialize at its deadline (2 s) and replaces the
    // worker stuck in it: no process is left for the 30 s the vendor takes.
    let gone = Instant::now() + Duration::from_secs(15);
    while children_of(proxy.pid()) != probe_only && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("worker gone {:?} after the first hello", started.elapsed());
    assert_eq!(children_of(proxy.pid()), probe_only);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(proxy.log_contains("C_Initialize outlived its deadline"));
    // One abandoned C_Initialize and one new instance per worker the shim's attempts reached
    // (a later attempt may reach the replacement, which hangs as well).
    let abandoned = by_reason(&proxy, "pkcs11_proxy_abandoned_calls")["call_deadline"];
    let replaced = reinitialisations(&proxy)["hung_call"];
    println!("abandoned C_Initialize calls {abandoned}, instances replaced {replaced}");
    assert!((1..=3).contains(&abandoned), "{abandoned}");
    assert_eq!(abandoned, replaced);
    // The HSM answers again: the application's next C_Initialize works, and so do its calls.
    std::fs::remove_file(&hang).unwrap();
    assert_eq!(with_env(&vars, || m.initialize()), CKR_OK);
    make_token_key(&m);
}
