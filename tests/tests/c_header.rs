//! The published C header compiles with the system's PKCS#11 header, and a C program that
//! `dlopen`s the shim finds every entry point and the documented behaviour.

use std::process::Command;

use tests::{shim_path, TempDir};

#[test]
fn c_program_builds_against_the_header_and_loads_the_shim() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = TempDir::new("c-header");
    let exe = dir.path().join("header_test");
    let cc = Command::new("cc")
        .args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
        ])
        .arg("-I")
        .arg(root.join("include"))
        .arg("-I/usr/include/p11-kit-1")
        .arg(root.join("tests/c/header_test.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-ldl")
        .output()
        .expect("a C compiler (cc) must be installed");
    assert!(
        cc.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let run = Command::new(&exe)
        .arg(shim_path())
        .env_remove("PKCS11_PROXY_SOCKET")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("header_test: ok"));
    // The header publishes the protocol version this build speaks.
    let header = std::fs::read_to_string(root.join("include/pkcs11_proxy.h")).unwrap();
    let line = format!(
        "#define PKCS11_PROXY_PROTOCOL_VERSION {}",
        protocol::handshake::VERSION
    );
    assert!(header.contains(&line), "{line}");
}
