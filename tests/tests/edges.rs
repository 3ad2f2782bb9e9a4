//! Inputs no buffer matches never abort the calling process (DESIGN.md, "The vendor decides":
//! a length no frame can carry is checked before any slice is made or byte copied).

use std::process::Command;

use tests::{private_copy, shim_path, ProxyServer, SoftHsm, TempDir};

#[test]
fn lengths_no_buffer_has_never_abort_the_caller() {
    let hsm = SoftHsm::new("huge");
    let server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("huge");
    let out = Command::new(env!("CARGO_BIN_EXE_huge-lengths"))
        .arg(private_copy(&shim_path(), dir.path()))
        .env("PKCS11_PROXY_SOCKET", &server.address)
        .env("PKCS11_PROXY_LOG", "error")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success() && text.contains("process alive"),
        "{:?}: {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Every call with a length over its buffer was refused; none went through.
    let calls: Vec<&str> = text.lines().filter(|l| l.starts_with("0x")).collect();
    assert_eq!(calls.len(), 3 * 6, "{text}");
    for line in calls {
        assert!(!line.ends_with(" 0x0"), "{line}");
    }
    // The message-based Init with its real structure reaches the vendor (2.40 here: not
    // supported), instead of being read as a CK_GCM_PARAMS.
    assert!(
        text.contains("C_MessageEncryptInit(CK_GCM_MESSAGE_PARAMS) 0x54"),
        "{text}"
    );
}
