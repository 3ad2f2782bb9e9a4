//! The suite's second vendor (issue 27): kryoptic, an independent PKCS#11 implementation
//! with the 3.2 interface. Differences between SoftHSM2 and kryoptic are theirs; between
//! kryoptic loaded directly and kryoptic through the proxy there must be none.

use std::process::Command;

use tests::kryoptic::{module_path, Kryoptic};

use tests::{ProxyServer, TempDir};

#[test]
fn the_parity_scenario_answers_the_same_directly_and_through_the_proxy_on_kryoptic() {
    // In a process of its own (the `parity` runner): see its documentation.
    let out = Command::new(tests::build_dir().join("parity"))
        .arg("--kryoptic")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().last().unwrap_or_default().to_string();
    eprintln!("kryoptic: {summary}");
    assert!(out.status.success(), "{text}");
    let passed: usize = summary
        .strip_prefix("parity: ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed > 100, "{summary}");
}

#[test]
fn post_quantum_and_the_3_2_calls_answer_the_same_directly_and_through_the_proxy() {
    // ML-DSA-65 signatures (with and without a context, deterministic, the 3.2
    // C_VerifySignature* calls), ML-KEM-768 encapsulation and decapsulation with the two-call
    // convention, C_GetSessionValidationFlags, the asynchronous calls, authenticated wrapping:
    // in the `parity` runner's process (see its documentation).
    let out = Command::new(tests::build_dir().join("parity"))
        .args(["--kryoptic", "--v3.2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().last().unwrap_or_default().to_string();
    eprintln!("kryoptic 3.2: {summary}");
    assert!(out.status.success(), "{text}");
    for step in [
        "ok    ML-DSA C_Sign ",
        "ok    ML-DSA tampered C_VerifySignature ",
        "ok    ML-KEM C_EncapsulateKey ",
        "ok    ML-KEM the same secret ",
        "ok    C_GetInterfaceList ",
    ] {
        assert!(text.contains(step), "{step}: {text}");
    }
    // Signatures verified and secrets matched directly, so the same through the proxy.
    assert!(text.contains("ML-KEM the same secret                        rv=0x0"));
    let passed: usize = summary
        .strip_prefix("parity: ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 60, "{summary}");
}

#[test]
fn the_edge_case_matrix_answers_the_same_on_kryoptic_while_initialised() {
    // Every v2.40 function with every argument shape (`tests/src/matrix.rs`), on two kryoptic
    // tokens alike, one direct and one through the proxy, in the `parity` runner's process.
    let out = Command::new(tests::build_dir().join("parity"))
        .args(["--kryoptic", "--matrix"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "kryoptic matrix: {}",
        text.lines().last().unwrap_or_default()
    );
    let initialised_ok = text
        .lines()
        .filter(|l| l.starts_with("ok    [initialised]"))
        .count();
    assert!(initialised_ok > 2000, "{initialised_ok} cases: {text}");
    // While initialised: no difference at all.
    let differ: Vec<&str> = text.lines().filter(|l| l.starts_with("DIFF")).collect();
    let inside: Vec<&&str> = differ
        .iter()
        .filter(|l| !l.contains("[before C_Initialize]") && !l.contains("[after C_Finalize]"))
        .collect();
    assert!(inside.is_empty(), "{}", text);
    // Before C_Initialize and after C_Finalize there is no vendor instance for the
    // application: the shim answers CKR_CRYPTOKI_NOT_INITIALIZED to every call, as the
    // specification says a library does (v2.40 §5.4; SoftHSM2 does, and its matrix is equal
    // there too), while kryoptic checks its arguments first and answers C_GetInfo. Those are
    // the only differences.
    assert!(
        differ.iter().all(|l| l.contains("proxy rv=0x190 ")),
        "{}",
        differ.join("\n")
    );
}

#[test]
fn pkcs11_tool_tests_the_same_on_kryoptic_directly_and_through_the_proxy() {
    let k = Kryoptic::new("tool");
    let (key, value) = k.env();
    let server = ProxyServer::start_args(
        &[
            "--module",
            module_path().to_str().unwrap(),
            "--listen",
            "tcp://127.0.0.1:0",
        ],
        &[(key, &value)],
    );
    let dir = TempDir::new("kryoptic-tool");
    let shim = tests::private_copy(&tests::shim_path(), dir.path());
    let tool = |module: &std::path::Path, args: &[&str]| {
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(module)
            .args(args)
            .env(key, &value)
            .env("PKCS11_PROXY_SOCKET", &server.address)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // A key to test with, made through the proxy.
    let (code, out) = tool(
        &shim,
        &[
            "-l",
            "--pin",
            tests::PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "k1",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let direct = tool(&module_path(), &["-l", "--pin", tests::PIN, "--test"]);
    let proxied = tool(&shim, &["-l", "--pin", tests::PIN, "--test"]);
    assert_eq!(direct.0, Some(0), "{}", direct.1);
    assert_eq!(direct, proxied);
    // The library's information, the 3.2 version it reports included.
    let direct = tool(&module_path(), &["-I"]);
    let proxied = tool(&shim, &["-I"]);
    assert!(direct.1.contains("Cryptoki version 3.2"), "{}", direct.1);
    assert_eq!(direct, proxied);
}
