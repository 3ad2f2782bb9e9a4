//! What operators see: Prometheus metrics and health endpoints, the configuration file and
//! `--check-config`, JSON logs.

use std::process::Command;

use cryptoki_sys::*;
use tests::raw::RawModule;
use tests::{
    http_get as get, private_copy, server_path, shim_path, with_env, ProxyServer, SoftHsm, TempDir,
    PIN, SOFTHSM,
};

/// The value of a metric line starting with `prefix`, 0 if absent.
fn value(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn metrics_and_health_endpoints_move_with_calls() {
    let hsm = SoftHsm::new("metrics");
    let server = ProxyServer::start_with_metrics(&hsm);
    let metrics_addr = server.metrics_address();
    assert_eq!(get(&metrics_addr, "/healthz").0, "HTTP/1.1 200 OK");
    assert_eq!(get(&metrics_addr, "/readyz").0, "HTTP/1.1 200 OK");
    assert!(get(&metrics_addr, "/nothing").0.contains("404"));
    let before = get(&metrics_addr, "/metrics").1;
    let random_ok = "pkcs11_proxy_calls_total{function=\"C_GenerateRandom\",rv=\"CKR_OK\"}";
    assert_eq!(value(&before, random_ok), 0.0);

    let dir = TempDir::new("metrics");
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || m
            .initialize()),
        CKR_OK
    );
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, "0000"), CKR_PIN_INCORRECT);
    assert_eq!(m.login(s, PIN), CKR_OK);
    let mut buf = [0u8; 32];
    for _ in 0..5 {
        // SAFETY: valid buffer.
        assert_eq!(
            unsafe { m.f().C_GenerateRandom.unwrap()(s, buf.as_mut_ptr(), 32) },
            CKR_OK
        );
    }
    let after = get(&metrics_addr, "/metrics").1;
    assert_eq!(value(&after, random_ok), 5.0, "{after}");
    assert_eq!(
        value(
            &after,
            "pkcs11_proxy_calls_total{function=\"C_Login\",rv=\"CKR_PIN_INCORRECT\"}"
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "pkcs11_proxy_call_duration_seconds_count{function=\"C_GenerateRandom\"}"
        ) >= 5.0
    );
    assert!(value(&after, "pkcs11_proxy_connections_open ") >= 1.0);
    assert!(
        value(&after, "pkcs11_proxy_received_bytes_total")
            > value(&before, "pkcs11_proxy_received_bytes_total")
    );
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("pkcs11_proxy_sessions{client=") && l.ends_with(" 1")),
        "{after}"
    );
    assert!(
        server.log_contains("call failed"),
        "a failed call is logged"
    );
}

#[test]
fn configuration_file_check_config_and_json_logs() {
    let hsm = SoftHsm::new("config");
    let dir = TempDir::new("config");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../proxy-server/server.example.toml");
    let ok = Command::new(server_path())
        .args(["--check-config", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration OK"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "module = \"/usr/lib/softhsm/libsofthsm2.so\"\nlisen = [\"tcp://127.0.0.1:0\"]\n",
    )
    .unwrap();
    let out = Command::new(server_path())
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml") && err.contains("line 2") && err.contains("lisen"),
        "{err}"
    );

    // A server configured by a file (its settings checked in proxy-server's config tests,
    // flags winning), logging JSON.
    let file = dir.path().join("server.toml");
    std::fs::write(&file, format!("module = \"{SOFTHSM}\"\nlisten = [\"tcp://127.0.0.1:0\"]\nlog_format = \"json\"\nmax_connections = 1\n")).unwrap();
    let server = ProxyServer::start_with(
        &hsm,
        &["--config", file.to_str().unwrap(), "--max-connections", "8"],
        &[],
    );
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || m
            .initialize()),
        CKR_OK
    );
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, PIN), CKR_OK);
    assert!(server.log_contains("client connected"));
    let log = server.log.lock().unwrap();
    let json_lines = log.iter().filter(|l| l.starts_with('{')).count();
    assert!(
        json_lines >= 2
            && log
                .iter()
                .filter(|l| l.starts_with('{'))
                .all(|l| l.ends_with('}')),
        "{log:?}"
    );
}

#[test]
fn fabric_signing_leaves_no_failure_in_the_server_log() {
    // The identity of each key handed out (recorded for recovery) comes with the answer that
    // hands it out, read with only the attributes its class has: no C_GetAttributeValue of
    // the shim's own, no CKR_ATTRIBUTE_TYPE_INVALID, nothing logged.
    let hsm = SoftHsm::new("quietlog");
    let server = ProxyServer::start_with_metrics(&hsm);
    let dir = TempDir::new("quietlog");
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || m
            .initialize()),
        CKR_OK
    );
    tests::fabric::make_token_key(&m);
    let s = m.open_rw(m.first_slot());
    for _ in 0..3 {
        // SAFETY: a logged-in session of this module.
        assert_eq!(unsafe { tests::fabric::fabric_sign(&m, s) }, CKR_OK);
    }
    let metrics = get(&server.metrics_address(), "/metrics").1;
    assert!(
        !metrics.contains("function=\"C_GetAttributeValue\""),
        "{metrics}"
    );
    // A failure after it is logged: the log is read up to there.
    assert_eq!(m.login(s, "0000"), CKR_USER_ALREADY_LOGGED_IN);
    // SAFETY: an invalid handle, answered by the vendor.
    assert_ne!(unsafe { m.f().C_DestroyObject.unwrap()(s, 0xdead) }, CKR_OK);
    assert!(server.log_contains("call failed"));
    let failures = server.log_lines_containing("call failed");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("C_DestroyObject"), "{failures:?}");
}
