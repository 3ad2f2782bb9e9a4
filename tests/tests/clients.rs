//! Real PKCS#11 consumers through the proxy, compared with the same consumer on SoftHSM2
//! directly: OpenSC's pkcs11-tool.

use std::path::Path;
use std::process::{Command, Output};

use tests::{
    build_go_fabric, private_copy, shim_path, ProxyServer, SoftHsm, TempDir, PIN, SOFTHSM,
};

fn pkcs11_tool(module: &Path, hsm: &SoftHsm, server: &ProxyServer, args: &[&str]) -> Output {
    Command::new("pkcs11-tool")
        .arg("--module")
        .arg(module)
        .args(args)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .env("PKCS11_PROXY_SOCKET", &server.address)
        .output()
        .expect("pkcs11-tool (Debian package opensc) must be installed")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The output as a sorted list of blocks (a line and its indented continuation): SoftHSM2
/// enumerates objects in an order that differs from one process to the next.
fn blocks(text: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        match blocks.last_mut() {
            Some(b) if line.starts_with(' ') => {
                b.push('\n');
                b.push_str(line);
            }
            _ => blocks.push(line.to_string()),
        }
    }
    blocks.sort();
    blocks
}

#[test]
fn pkcs11_tool_test_and_listings_match_direct() {
    let hsm = SoftHsm::new("opensc");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("opensc");
    let shim = private_copy(&shim_path(), dir.path());
    let direct = Path::new(SOFTHSM);

    // Key generation through the proxy; the key lands in the token for both to see.
    let gen = pkcs11_tool(
        &shim,
        &hsm,
        &server,
        &[
            "--login",
            "--pin",
            PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "fabric",
            "--id",
            "0a",
        ],
    );
    assert!(gen.status.success(), "{}", text(&gen));

    for args in [
        vec!["--list-mechanisms"],
        vec!["--list-slots"],
        vec!["--login", "--pin", PIN, "--list-objects"],
        vec!["--login", "--pin", PIN, "--test"],
    ] {
        let d = pkcs11_tool(direct, &hsm, &server, &args);
        let p = pkcs11_tool(&shim, &hsm, &server, &args);
        assert_eq!(
            p.status.code(),
            d.status.code(),
            "{args:?}\ndirect:\n{}\nproxy:\n{}",
            text(&d),
            text(&p)
        );
        assert_eq!(blocks(&text(&p)), blocks(&text(&d)), "{args:?}");
        assert!(d.status.success(), "{args:?}: {}", text(&d));
    }

    // Sign through the proxy, verify directly.
    let data = dir.path().join("data");
    let sig = dir.path().join("sig");
    std::fs::write(&data, [0x42u8; 32]).unwrap();
    let s = pkcs11_tool(
        &shim,
        &hsm,
        &server,
        &[
            "--login",
            "--pin",
            PIN,
            "--sign",
            "--mechanism",
            "ECDSA",
            "--id",
            "0a",
            "--input-file",
            data.to_str().unwrap(),
            "--output-file",
            sig.to_str().unwrap(),
        ],
    );
    assert!(s.status.success(), "{}", text(&s));
    let v = pkcs11_tool(
        direct,
        &hsm,
        &server,
        &[
            "--login",
            "--pin",
            PIN,
            "--verify",
            "--mechanism",
            "ECDSA",
            "--id",
            "0a",
            "--input-file",
            data.to_str().unwrap(),
            "--signature-file",
            sig.to_str().unwrap(),
        ],
    );
    assert!(
        v.status.success() && text(&v).contains("Signature is valid"),
        "{}",
        text(&v)
    );
}

#[test]
fn fabric_bccsp_sequence_with_go_miekg_pkcs11() {
    let hsm = SoftHsm::new("fabric");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("fabric");
    let program = build_go_fabric(dir.path());
    let shim = private_copy(&shim_path(), dir.path());
    let mut empty_pin = Vec::new();
    for module in [Path::new(SOFTHSM), shim.as_path()] {
        let out = Command::new(&program)
            .arg(module)
            .args([&hsm.label, PIN])
            .env("SOFTHSM2_CONF", &hsm.conf)
            .env("PKCS11_PROXY_SOCKET", &server.address)
            .output()
            .unwrap();
        assert!(
            out.status.success() && text(&out).contains("fabric sequence ok"),
            "{}: {}",
            module.display(),
            text(&out)
        );
        empty_pin.push(
            text(&out)
                .lines()
                .find(|l| l.starts_with("empty-PIN login"))
                .unwrap_or("no empty-PIN line")
                .to_string(),
        );
    }
    // The login that made Fabric crash through an emulating proxy: the vendor's own answer.
    assert_eq!(empty_pin[0], empty_pin[1], "directly / through the proxy");
    println!("{}", empty_pin[1]);
}

fn p11tool(module: &Path, hsm: &SoftHsm, server: &ProxyServer, args: &[&str]) -> Output {
    Command::new("p11tool")
        .arg(format!("--provider={}", module.display()))
        .args(args)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .env("PKCS11_PROXY_SOCKET", &server.address)
        .output()
        .expect("p11tool (Debian package gnutls-bin) must be installed")
}

#[test]
fn gnutls_p11tool_lists_generates_and_signs_with_pkcs11_urls() {
    let hsm = SoftHsm::new("gnutls");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("gnutls");
    let shim = private_copy(&shim_path(), dir.path());
    let direct = Path::new(SOFTHSM);
    let pin = format!("--set-pin={PIN}");
    let gen = p11tool(
        &shim,
        &hsm,
        &server,
        &[
            "--login",
            &pin,
            "--generate-privkey=ECDSA",
            "--curve=secp256r1",
            "--label=gnutls-key",
            "pkcs11:token=gnutls",
        ],
    );
    assert!(
        gen.status.success() && text(&gen).contains("BEGIN PUBLIC KEY"),
        "{}",
        text(&gen)
    );
    for args in [
        vec!["--list-tokens"],
        vec!["--login", &pin, "--list-all", "pkcs11:token=gnutls"],
    ] {
        let d = p11tool(direct, &hsm, &server, &args);
        let p = p11tool(&shim, &hsm, &server, &args);
        assert!(
            d.status.success() && p.status.success(),
            "{args:?}\n{}\n{}",
            text(&d),
            text(&p)
        );
        assert_eq!(blocks(&text(&p)), blocks(&text(&d)), "{args:?}");
    }
    for module in [shim.as_path(), direct] {
        let sign = p11tool(
            module,
            &hsm,
            &server,
            &[
                "--login",
                &pin,
                "--test-sign",
                "pkcs11:token=gnutls;object=gnutls-key;type=private",
            ],
        );
        let out = text(&sign);
        assert!(
            sign.status.success()
                && out.contains("Verifying against public key in the token... ok"),
            "{out}"
        );
    }
}

#[test]
fn pkcs11_tool_test_ec_matches_direct() {
    let hsm = SoftHsm::new("testec");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("testec");
    let shim = private_copy(&shim_path(), dir.path());
    let args = [
        "--login",
        "--pin",
        PIN,
        "--test-ec",
        "--id",
        "ec01",
        "--key-type",
        "EC:prime256v1",
    ];
    let p = pkcs11_tool(&shim, &hsm, &server, &args);
    let d = pkcs11_tool(Path::new(SOFTHSM), &hsm, &server, &args);
    assert_eq!(
        p.status.code(),
        d.status.code(),
        "direct:\n{}\nproxy:\n{}",
        text(&d),
        text(&p)
    );
    // Debian 12's OpenSC opens a read-only session for --test-ec, so SoftHSM2 itself refuses
    // the key generation (CKR_SESSION_READ_ONLY): the proxy must fail in exactly the same way.
    assert_eq!(blocks(&text(&p)), blocks(&text(&d)));
    assert!(text(&d).contains("C_GenerateKeyPair"), "{}", text(&d));
}

#[test]
fn openssl_signs_a_file_and_a_csr_with_a_token_key_through_the_engine() {
    let hsm = SoftHsm::new("openssl");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("openssl");
    let shim = private_copy(&shim_path(), dir.path());
    let gen = pkcs11_tool(
        &shim,
        &hsm,
        &server,
        &[
            "--login",
            "--pin",
            PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "tls",
            "--id",
            "0b",
        ],
    );
    assert!(gen.status.success(), "{}", text(&gen));
    let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .env("PKCS11_MODULE_PATH", &shim)
            .env("PKCS11_PROXY_SOCKET", &server.address)
            .output()
            .expect("openssl must be installed");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
        text(&out)
    };
    let key = format!("pkcs11:token=openssl;object=tls;type=private;pin-value={PIN}");
    std::fs::write(file("msg"), b"a block to endorse").unwrap();
    openssl(&[
        "dgst",
        "-engine",
        "pkcs11",
        "-keyform",
        "engine",
        "-sign",
        &key,
        "-sha256",
        "-out",
        &file("sig"),
        &file("msg"),
    ]);
    // The public key, read out through the proxy, verifies in plain OpenSSL.
    let read = pkcs11_tool(
        &shim,
        &hsm,
        &server,
        &[
            "--read-object",
            "--type",
            "pubkey",
            "--id",
            "0b",
            "--output-file",
            &file("pub.der"),
        ],
    );
    assert!(read.status.success(), "{}", text(&read));
    let verified = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        &file("pub.der"),
        "-keyform",
        "DER",
        "-signature",
        &file("sig"),
        &file("msg"),
    ]);
    assert!(verified.contains("Verified OK"), "{verified}");
    // A CSR signed by the token key, as a Fabric CA enrolment does.
    openssl(&[
        "req",
        "-new",
        "-engine",
        "pkcs11",
        "-keyform",
        "engine",
        "-key",
        &key,
        "-subj",
        "/CN=peer0.org1",
        "-out",
        &file("csr"),
    ]);
    let checked = openssl(&["req", "-in", &file("csr"), "-verify", "-noout"]);
    assert!(
        checked.contains("verify OK")
            || checked.contains("Certificate request self-signature verify OK"),
        "{checked}"
    );
}

#[test]
fn pkcs11_tool_pin_management_in_a_row_matches_direct() {
    // Each pkcs11-tool run is a process that may exit without C_Finalize: its login must not
    // outlive it (the shim ends its view at exit), or the SO login after it would be refused.
    let hsm = SoftHsm::new("pins");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("pins");
    let shim = private_copy(&shim_path(), dir.path());
    for module in [shim.as_path(), Path::new(SOFTHSM)] {
        for args in [
            vec![
                "--login",
                "--pin",
                PIN,
                "--change-pin",
                "--pin",
                PIN,
                "--new-pin",
                "24681357",
            ],
            vec![
                "--login",
                "--pin",
                "24681357",
                "--change-pin",
                "--pin",
                "24681357",
                "--new-pin",
                PIN,
            ],
            vec![
                "--login",
                "--login-type",
                "so",
                "--so-pin",
                tests::SO_PIN,
                "--init-pin",
                "--new-pin",
                PIN,
            ],
            vec![
                "--login",
                "--pin",
                PIN,
                "--keygen",
                "--key-type",
                "AES:32",
                "--label",
                "k",
            ],
            vec![
                "--login",
                "--pin",
                PIN,
                "--delete-object",
                "--type",
                "secrkey",
                "--label",
                "k",
            ],
        ] {
            let out = pkcs11_tool(module, &hsm, &server, &args);
            assert!(
                out.status.success(),
                "{} {args:?}: {}",
                module.display(),
                text(&out)
            );
        }
    }
}
