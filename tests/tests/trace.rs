//! The call trace on both sides: the shim's (`PKCS11_PROXY_LOG=trace`, a line per call the
//! application makes) under Fabric's own binding, and the server's, switched on and off
//! without a restart for every application (SIGUSR1/SIGUSR2 to the router) or one (to its
//! worker).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use tests::raw::RawModule;
use tests::{
    build_go_fabric, private_copy, proxy_client, shim_path, ProxyServer, SoftHsm, TempDir, PIN,
};

/// One line of the shim's trace: `pkcs11-shim[PID] Trace: thread T C_Name(ARGS) = RV[ -> ANSWER] (MS ms)`.
#[derive(Debug)]
struct Traced {
    thread: u64,
    function: String,
    arguments: String,
    rv: String,
    answer: String,
}

fn parse(line: &str) -> Option<Traced> {
    let rest = line.split_once(" Trace: thread ")?.1;
    let (thread, rest) = rest.split_once(' ')?;
    let (function, rest) = rest.split_once('(')?;
    let (arguments, rest) = rest.rsplit_once(") = ")?;
    let (outcome, ms) = rest.rsplit_once(" (")?;
    ms.strip_suffix(" ms)")?.parse::<f64>().ok()?;
    let (rv, answer) = outcome.split_once(" -> ").unwrap_or((outcome, ""));
    Some(Traced {
        thread: thread.parse().ok()?,
        function: function.to_string(),
        arguments: arguments.to_string(),
        rv: rv.to_string(),
        answer: answer.to_string(),
    })
}

#[test]
fn the_shim_traces_each_call_of_fabrics_signing_sequence_once_with_its_code() {
    let hsm = SoftHsm::new("trace");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("trace");
    let program = build_go_fabric(dir.path());
    let file = dir.path().join("calls.log");
    let out = Command::new(&program)
        .arg(private_copy(&shim_path(), dir.path()))
        .args([hsm.label.as_str(), PIN])
        .env("PKCS11_PROXY_SOCKET", &server.address)
        .env("PKCS11_PROXY_LOG", "trace")
        .env("PKCS11_PROXY_LOG_FILE", &file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("fabric sequence ok"), "{stdout}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" Trace: ")).collect();
    let calls: Vec<Traced> = lines
        .iter()
        .map(|l| parse(l).unwrap_or_else(|| panic!("not a trace line: {l}")))
        .collect();
    let of = |f: &str| calls.iter().filter(|c| c.function == f).collect::<Vec<_>>();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for c in &calls {
        *counts.entry(c.function.as_str()).or_default() += 1;
    }
    eprintln!("{} calls traced: {counts:?}", calls.len());
    eprintln!("e.g.\n{}", lines[..lines.len().min(12)].join("\n"));

    // The sequence's calls (tests/go/fabric), each once.
    assert_eq!(of("C_Initialize").len(), 1);
    assert_eq!(of("C_Initialize")[0].rv, "CKR_OK");
    assert_eq!(of("C_GenerateKeyPair").len(), 1);
    let generated = of("C_GenerateKeyPair")[0];
    assert!(generated
        .arguments
        .contains("mechanism=CKM_EC_KEY_PAIR_GEN"));
    assert!(generated.arguments.contains("CKA_EC_PARAMS(10 bytes)"));
    assert!(generated.answer.starts_with("public "), "{generated:?}");
    assert_eq!(of("C_SetAttributeValue").len(), 2);
    assert!(of("C_SetAttributeValue").iter().all(|c| c
        .arguments
        .contains("[CKA_ID(32 bytes), CKA_LABEL(64 bytes)]")
        && c.rv == "CKR_OK"));
    assert_eq!(
        (of("C_CopyObject").len(), of("C_DestroyObject").len()),
        (1, 1)
    );
    assert_eq!(of("C_FindObjectsInit").len(), 2);
    assert_eq!(of("C_FindObjects").len(), 2);
    assert!(of("C_FindObjects")
        .iter()
        .all(|c| c.answer.starts_with('[')));
    // 202 signatures: C_SignInit and miekg's two-call C_Sign, a size query then the buffer.
    let inits = of("C_SignInit");
    assert_eq!(inits.len(), 202);
    assert!(inits
        .iter()
        .all(|c| c.rv == "CKR_OK" && c.arguments.contains("mechanism=CKM_ECDSA")));
    let signs = of("C_Sign");
    assert_eq!(signs.len(), 404);
    let queries = signs
        .iter()
        .filter(|c| c.arguments.ends_with("data=32 bytes, capacity=NULL"))
        .count();
    let real = signs
        .iter()
        .filter(|c| c.arguments.ends_with("data=32 bytes, capacity=buffer(64)"))
        .count();
    assert_eq!((queries, real), (202, 202));
    assert!(signs
        .iter()
        .all(|c| c.rv == "CKR_OK" && c.answer == "64 bytes"));
    // Twelve logins (the first, the empty-PIN one, ten pooled sessions'): never the PIN.
    let logins = of("C_Login");
    assert_eq!(logins.len(), 12);
    assert_eq!(logins[0].rv, "CKR_OK");
    assert!(logins
        .iter()
        .all(|c| c.arguments.ends_with("pin=***") || c.arguments.ends_with("pin=NULL")));
    assert!(!text.contains(&format!("pin={PIN}")));
    // The ten signing goroutines ran on several threads, each line naming its own.
    let threads: std::collections::HashSet<u64> = signs.iter().map(|c| c.thread).collect();
    assert!(threads.len() > 1, "{threads:?}");
}

/// A few calls of `m`: a session, a login, random bytes.
fn some_calls(m: &RawModule) {
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, PIN), CKR_OK);
    let mut r = [0u8; 16];
    // SAFETY: a valid session and buffer.
    let rv = unsafe { m.f().C_GenerateRandom.unwrap()(s, r.as_mut_ptr(), 16) };
    assert_eq!(rv, CKR_OK);
    // SAFETY: as above.
    unsafe { m.f().C_CloseSession.unwrap()(s) };
}

/// Waits until `server`'s log holds at least `n` lines containing `needle`.
fn wait_lines(server: &ProxyServer, needle: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = server.log_lines_containing(needle);
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) of a process of the server under test.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

#[test]
fn the_server_traces_every_application_or_one_switched_on_and_off_by_signals() {
    let hsm = SoftHsm::new("strace");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("strace");
    let before = server.workers();
    let a = proxy_client(&server.address, &dir);
    let a_worker: Vec<u32> = server
        .workers()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(a_worker.len(), 1, "{a_worker:?}");
    let b = proxy_client(&server.address, &dir);

    // Off by default.
    some_calls(&a);
    assert!(server.log_lines_containing("C_GenerateRandom(").is_empty());

    // Every application, from the router.
    kill(server.pid(), libc::SIGUSR1);
    assert!(server.log_contains("call trace on for every application"));
    wait_lines(&server, "call trace on", 3);
    some_calls(&a);
    some_calls(&b);
    let random = wait_lines(&server, "C_GenerateRandom(", 2);
    assert_eq!(random.len(), 2, "{random:?}");
    for line in &random {
        assert!(line.contains("= CKR_OK -> 16 bytes"), "{line}");
        assert!(
            line.contains("identity=\"tcp\"") && line.contains("peer=\"127.0.0.1:"),
            "{line}"
        );
        assert!(line.contains("app="), "{line}");
    }
    let logins = server.log_lines_containing("C_Login(");
    assert_eq!(logins.len(), 2, "{logins:?}");
    assert!(logins.iter().all(|l| l.contains("pin=***")));
    assert!(!logins.iter().any(|l| l.contains(&format!("pin={PIN}"))));

    // Off again.
    kill(server.pid(), libc::SIGUSR2);
    assert!(server.log_contains("call trace off for every application"));
    wait_lines(&server, "call trace off", 3);
    some_calls(&a);
    some_calls(&b);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.log_lines_containing("C_GenerateRandom(").len(), 2);

    // One application: its worker's signal.
    kill(a_worker[0], libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(100));
    some_calls(&b);
    some_calls(&a);
    let random = wait_lines(&server, "C_GenerateRandom(", 3);
    std::thread::sleep(Duration::from_millis(300));
    let random_now = server.log_lines_containing("C_GenerateRandom(");
    assert_eq!(random_now.len(), 3, "only A's call: {random:?}");
    // A's line carries the same application label as A's lines before.
    let label = |l: &str| {
        l.split("app=")
            .nth(1)
            .map(|r| r.split([' ', '}']).next().unwrap().to_string())
    };
    let a_label = label(&random_now[2]);
    assert!(a_label.is_some());
    assert_eq!(
        random_now[..2]
            .iter()
            .filter(|l| label(l) == a_label)
            .count(),
        1,
        "{random_now:?}"
    );
}
