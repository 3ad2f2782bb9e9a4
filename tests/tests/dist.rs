//! The release artifacts of `bash .ci/dist x86_64` (`target/dist/<target>/`, built by
//! `tests/run-tests.sh` before the suite): each stays within its C library baseline, and each
//! shim is loaded and used by a process of its own C library, against the release server.
//! Fabric's images run Alpine (musl), Ubuntu 20.04 (glibc 2.31) and UBI 8 (glibc 2.28): the
//! shim runs inside them, not on this machine's glibc.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tests::{build_dir, ProxyServer, SoftHsm, TempDir, PIN, SOFTHSM};

/// `target/dist/<target>/<file>`, which must have been built.
fn artifact(target: &str, file: &str) -> PathBuf {
    let p = build_dir()
        .parent()
        .expect("target dir")
        .join("dist")
        .join(target)
        .join(file);
    assert!(
        p.exists(),
        "{} is missing: run `bash .ci/dist x86_64` first (tests/run-tests.sh does)",
        p.display()
    );
    p
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `tests/c/fabric_sign.c` built with `cc` (gcc, glibc) or `musl-gcc`.
fn fabric_client(cc: &str, dir: &TempDir) -> PathBuf {
    let out = dir.path().join(format!("fabric-sign-{cc}"));
    let build = Command::new(cc)
        .args(["-O2", "-Wall", "-Werror", "-I/usr/include/p11-kit-1"])
        .arg(root().join("tests/c/fabric_sign.c"))
        .arg("-o")
        .arg(&out)
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| panic!("{cc} (Debian packages gcc, musl-tools): {e}"));
    assert!(build.status.success(), "{cc}: {}", text(&build));
    out
}

/// The release server (glibc 2.17 build) on `hsm`.
fn release_server(hsm: &SoftHsm) -> ProxyServer {
    let conf = hsm.conf.to_string_lossy().into_owned();
    ProxyServer::start_program(
        &artifact("x86_64-unknown-linux-gnu", "pkcs11-proxy-server"),
        &["--module", SOFTHSM, "--listen", "tcp://127.0.0.1:0"],
        &[("SOFTHSM2_CONF", &conf)],
    )
}

/// Runs Fabric's signing pattern `count` times in `client` through `shim`.
fn sign_through(client: &Path, shim: &Path, server: &ProxyServer, count: u32) -> String {
    let run = Command::new(client)
        .arg(shim)
        .arg(PIN)
        .arg(count.to_string())
        .env("PKCS11_PROXY_SOCKET", &server.address)
        .output()
        .expect("run the client");
    assert!(run.status.success(), "{}", text(&run));
    String::from_utf8_lossy(&run.stdout).trim().to_string()
}

/// The program interpreter an executable names (its C library's loader).
fn interpreter(exe: &Path) -> String {
    let out = Command::new("readelf").arg("-l").arg(exe).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.split("interpreter: ").nth(1))
        .unwrap_or_default()
        .trim_end_matches(']')
        .to_string()
}

#[test]
fn release_artifacts_stay_within_their_baselines() {
    let check = |args: &[&str]| {
        Command::new("bash")
            .arg(root().join(".ci/check-baseline"))
            .args(args)
            .output()
            .unwrap()
    };
    for (kind, target, file) in [
        ("gnu", "x86_64-unknown-linux-gnu", "libpkcs11_shim.so"),
        ("gnu", "x86_64-unknown-linux-gnu", "pkcs11-proxy-server"),
        ("musl", "x86_64-unknown-linux-musl", "libpkcs11_shim.so"),
    ] {
        let path = artifact(target, file);
        let out = check(&["--file", kind, path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
    }
    // The check bites: this machine's own build (Debian 12) needs glibc 2.34.
    let native = build_dir().join("libpkcs11_shim.so");
    let out = check(&["--file", "gnu", native.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("GLIBC_2.34"), "{}", text(&out));
    // A musl shim needs musl's libc.so and nothing else; a gnu one is not a musl one.
    let gnu_as_musl = check(&[
        "--file",
        "musl",
        artifact("x86_64-unknown-linux-gnu", "libpkcs11_shim.so")
            .to_str()
            .unwrap(),
    ]);
    assert!(!gnu_as_musl.status.success(), "{}", text(&gnu_as_musl));
}

#[test]
fn the_musl_shim_signs_in_a_musl_process() {
    let hsm = SoftHsm::new("musl");
    let server = release_server(&hsm);
    let dir = TempDir::new("musl");
    let client = fabric_client("musl-gcc", &dir);
    assert!(
        interpreter(&client).contains("ld-musl"),
        "{}",
        interpreter(&client)
    );
    let shim = artifact("x86_64-unknown-linux-musl", "libpkcs11_shim.so");
    assert_eq!(
        sign_through(&client, &shim, &server, 500),
        "signed 500 errors 0"
    );
}

#[test]
fn the_glibc_2_17_shim_signs_in_a_glibc_process() {
    let hsm = SoftHsm::new("gnu217");
    let server = release_server(&hsm);
    let dir = TempDir::new("gnu217");
    let client = fabric_client("cc", &dir);
    assert!(
        interpreter(&client).contains("ld-linux"),
        "{}",
        interpreter(&client)
    );
    let shim = artifact("x86_64-unknown-linux-gnu", "libpkcs11_shim.so");
    assert_eq!(
        sign_through(&client, &shim, &server, 500),
        "signed 500 errors 0"
    );
}

#[test]
fn pkcs11_tool_tests_pass_through_the_glibc_2_17_shim() {
    let hsm = SoftHsm::new("gnu217tool");
    let server = release_server(&hsm);
    let shim = artifact("x86_64-unknown-linux-gnu", "libpkcs11_shim.so");
    let tool = |args: &[&str]| {
        Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&shim)
            .args(args)
            .env("PKCS11_PROXY_SOCKET", &server.address)
            .output()
            .expect("pkcs11-tool (Debian package opensc)")
    };
    let gen = tool(&[
        "--login",
        "--pin",
        PIN,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "0b",
    ]);
    assert!(gen.status.success(), "{}", text(&gen));
    let test = tool(&["--login", "--pin", PIN, "--test"]);
    assert!(test.status.success(), "{}", text(&test));
    assert!(
        text(&test).contains("No errors"),
        "pkcs11-tool --test: {}",
        text(&test)
    );
}
