//! `--audit-log`: one JSON line per auditable event with the identity, the application, the
//! function, the token, the object's CKA_ID and CKA_LABEL, the mechanism and the return value,
//! on a hash chain that `pkcs11-proxy-server audit verify` checks: an edited, removed or
//! swapped line is found and named; rotation and restarts keep the chain.

use std::path::{Path, PathBuf};
use std::process::Command;

use cryptoki_sys::*;
use tests::fabric::{fabric_sign_data, find_signing_key, make_token_key_with_id};
use tests::pki::PolicyServer;
use tests::raw::RawModule;
use tests::{server_path, TempDir, PIN};

const POLICY: &str = r#"
    [[identity]]
    name = "org1-ca"
    certificate_cn = "org1-ca"
    role = "enroller"

    [[identity]]
    name = "org1-peer0"
    certificate_cn = "org1-peer0"
"#;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `audit verify FILES`: exit status and output.
fn verify(files: &[&Path]) -> (i32, String) {
    let out = Command::new(server_path())
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A server with the policy and an audit log at `log` (kept in a directory of its own, so
/// that a later server can go on with it), and `extra` flags.
fn start(tag: &str, log: &Path, extra: &[&str]) -> PolicyServer {
    let mut args = vec!["--audit-log", log.to_str().unwrap()];
    args.extend_from_slice(extra);
    PolicyServer::start(tag, POLICY, &args)
}

/// An application of CN `cn`, logged in.
fn app(run: &PolicyServer, cn: &str) -> (RawModule, CK_SESSION_HANDLE) {
    let (m, s) = run.app(cn);
    assert!(matches!(
        m.login(s, PIN),
        CKR_OK | CKR_USER_ALREADY_LOGGED_IN
    ));
    (m, s)
}

/// What a CA and a peer do on a first day: keys made, named, one destroyed; signatures; a
/// refused call.
fn a_day(run: &PolicyServer) {
    let (ca, s) = app(run, "org1-ca");
    assert_eq!(make_token_key_with_id(&ca, s, b"peer0-key"), CKR_OK);
    assert_eq!(make_token_key_with_id(&ca, s, b"scratch"), CKR_OK);
    // SAFETY: a logged-in session.
    let scratch = unsafe { find_signing_key(&ca, s, b"scratch") }.unwrap();
    let label = b"renamed";
    let mut t = [tests::fabric::attr(CKA_LABEL, label)];
    // SAFETY: a logged-in session, a valid template.
    let rv = unsafe { ca.f().C_SetAttributeValue.unwrap()(s, scratch, t.as_mut_ptr(), 1) };
    assert_eq!(rv, CKR_OK);
    // SAFETY: as above.
    assert_eq!(
        unsafe { ca.f().C_DestroyObject.unwrap()(s, scratch) },
        CKR_OK
    );
    let (peer, s) = app(run, "org1-peer0");
    for _ in 0..3 {
        // SAFETY: a logged-in session.
        assert_eq!(
            unsafe { fabric_sign_data(&peer, s, b"peer0-key", &[9; 32]) },
            CKR_OK
        );
    }
    assert_eq!(
        make_token_key_with_id(&peer, s, b"mine"),
        CKR_FUNCTION_NOT_SUPPORTED
    );
}

#[test]
fn every_management_call_key_use_and_refusal_is_on_a_chain_that_finds_tampering() {
    let logs = TempDir::new("audit-log");
    let log = logs.path().join("audit.jsonl");
    let mut run = start("audit", &log, &["--audit", "all"]);
    a_day(&run);
    run.server.stop();
    let text = lines(&log);
    let find = |needle: &[&str]| {
        text.iter()
            .find(|l| needle.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", text.join("\n")))
    };
    assert!(text[0].contains(r#""event":"start""#));
    assert!(text[0].ends_with(&format!(r#""prev":"{}"}}"#, "0".repeat(64))));
    find(&[
        r#""identity":"org1-ca""#,
        r#""function":"C_Login""#,
        r#""rv":"CKR_OK""#,
        r#""token":"audit""#,
    ]);
    find(&[
        r#""function":"C_GenerateKeyPair""#,
        r#""mechanism":"CKM_EC_KEY_PAIR_GEN""#,
        r#""rv":"CKR_OK""#,
    ]);
    // A key named after it was made: the new CKA_ID is in the record.
    find(&[
        r#""function":"C_SetAttributeValue""#,
        r#""detail":"sets CKA_LABEL renamed""#,
    ]);
    // The destroyed key is named by what it was.
    find(&[
        r#""function":"C_DestroyObject""#,
        &format!(r#""object_id":"{}""#, hex(b"scratch")),
    ]);
    // With --audit all, each use of the key, named.
    let uses = text
        .iter()
        .filter(|l| {
            l.contains(r#""function":"C_SignInit""#)
                && l.contains(r#""identity":"org1-peer0""#)
                && l.contains(&format!(r#""object_id":"{}""#, hex(b"peer0-key")))
                && l.contains(r#""mechanism":"CKM_ECDSA""#)
        })
        .count();
    assert_eq!(uses, 3);
    find(&[
        r#""event":"refused""#,
        r#""identity":"org1-peer0""#,
        r#""function":"C_GenerateKeyPair""#,
        r#""rv":"CKR_FUNCTION_NOT_SUPPORTED""#,
    ]);
    // Never a PIN (as a value of any field).
    assert!(!text.iter().any(|l| l.contains(&format!("\"{PIN}\""))));

    let (code, out) = verify(&[&log]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{} lines", text.len())), "{out}");

    // Each kind of tampering is found, and the line named.
    let tampered = logs.path().join("tampered.jsonl");
    let k = text
        .iter()
        .position(|l| l.contains("C_SignInit") && l.contains("CKR_OK"))
        .unwrap();
    let cases: Vec<(&str, Vec<String>, usize)> = vec![
        (
            "edited",
            {
                let mut t = text.clone();
                t[k] = t[k].replace("CKR_OK", "CKR_PIN_INCORRECT");
                assert_ne!(t[k], text[k]);
                t
            },
            k + 2,
        ),
        (
            "removed",
            {
                let mut t = text.clone();
                t.remove(k);
                t
            },
            k + 1,
        ),
        (
            "swapped",
            {
                let mut t = text.clone();
                t.swap(k, k + 1);
                t
            },
            k + 1,
        ),
        ("first lines removed", text[2..].to_vec(), 1),
    ];
    for (what, t, line) in cases {
        std::fs::write(&tampered, t.join("\n") + "\n").unwrap();
        let (code, out) = verify(&[&tampered]);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains(&format!("line {line}:")), "{what}: {out}");
    }
}

#[test]
fn rotation_and_restarts_keep_one_chain() {
    let logs = TempDir::new("rotate-log");
    let log = logs.path().join("audit.jsonl");
    let flags = ["--audit", "all", "--audit-max-bytes", "4096"];
    let mut run = start("rotate", &log, &flags);
    a_day(&run);
    a_day(&run);
    run.server.stop();
    // The same log, a new server: the chain goes on.
    let mut run = start("rotate-again", &log, &flags);
    a_day(&run);
    run.server.stop();
    let mut files: Vec<PathBuf> = std::fs::read_dir(logs.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit.jsonl.")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 2, "rotated files: {files:?}");
    files.push(log.clone());
    let all: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (code, out) = verify(&all);
    assert_eq!(code, 0, "{out}");
    assert!(lines(&log)[0].contains(r#""event":"rotated""#));
    // A rotated file left out breaks the chain where it was.
    let mut gap = all.clone();
    gap.remove(1);
    let (code, out) = verify(&gap);
    assert_eq!(code, 1, "{out}");
    // The newest file alone starts with its rotation record: its own lines check.
    let (code, out) = verify(&[&log]);
    assert_eq!(code, 0, "{out}");
}
