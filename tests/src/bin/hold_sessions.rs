//! Test helper: loads a PKCS#11 module, opens sessions, logs in, prints `ready`, and waits to be killed.
//! Used to check that the server closes the sessions of a client that dies.

use std::io::Write;

fn main() {
    let mut args = std::env::args().skip(1);
    let module = args.next().expect("usage: hold-sessions MODULE COUNT");
    let count: usize = args.next().and_then(|c| c.parse().ok()).unwrap_or(3);
    let m = tests::raw::RawModule::load(std::path::Path::new(&module));
    assert_eq!(m.initialize(), cryptoki_sys::CKR_OK);
    let slot = m.first_slot();
    let sessions: Vec<_> = (0..count).map(|_| m.open_rw(slot)).collect();
    let rv = m.login(sessions[0], tests::PIN);
    // Another application of a shared worker may have logged the token in (Fabric accepts it).
    assert!(rv == cryptoki_sys::CKR_OK || rv == cryptoki_sys::CKR_USER_ALREADY_LOGGED_IN);
    println!(
        "ready {}",
        sessions
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
