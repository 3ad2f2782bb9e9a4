//! `p11bench` runs and reports numbers, directly and through the proxy (a smoke test: timing
//! figures belong in the benchmark, not in tests).

use std::process::Command;

use tests::{shim_path, ProxyServer, SoftHsm, PIN, SOFTHSM};

fn bench(module: &str, hsm: &SoftHsm, server: &ProxyServer, op: &str, threads: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_p11bench"))
        .args([
            "--module",
            module,
            "--pin",
            PIN,
            "--token-label",
            &hsm.label,
            "--op",
            op,
        ])
        .args(["--threads", threads, "--seconds", "0.5", "--json"])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .env("PKCS11_PROXY_SOCKET", &server.address)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string()
}

/// The value of `"key":` in a flat JSON object.
fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let start = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} missing in {json}"))
        + key.len()
        + 3;
    json[start..].split([',', '}']).next().unwrap()
}

#[test]
fn p11bench_reports_direct_and_proxy_figures() {
    let hsm = SoftHsm::new("bench");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let shim = shim_path();
    for op in [
        "random",
        "sign-ecdsa-p256",
        "digest-sha256",
        "find-object",
        "fabric",
        "fabric-endorse",
        "get-attributes",
    ] {
        for module in [SOFTHSM, shim.to_str().unwrap()] {
            let json = bench(module, &hsm, &server, op, "2");
            assert_eq!(field(&json, "op"), format!("\"{op}\""));
            assert_eq!(field(&json, "errors"), "0", "{json}");
            assert!(field(&json, "ops").parse::<u64>().unwrap() > 0, "{json}");
            for key in [
                "threads",
                "seconds",
                "ops_per_sec",
                "p50_us",
                "p99_us",
                "p999_us",
            ] {
                assert!(field(&json, key).parse::<f64>().is_ok(), "{key} in {json}");
            }
        }
    }
}
