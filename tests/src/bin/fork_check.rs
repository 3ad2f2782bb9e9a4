//! Test helper: a process that initialises the shim, opens a session, forks, and checks that
//! the child starts from scratch (PKCS#11 v2.40 §6.7.7: a child must call C_Initialize; the
//! parent's sockets are never used by it) while the parent keeps working.
//! Prints `fork ok` and exits 0, or names the first failed check and exits 1.

use cryptoki_sys::*;
use tests::raw::RawModule;

fn check(what: &str, got: CK_RV, want: CK_RV) {
    if got != want {
        println!("{what}: got {got:#x}, want {want:#x}");
        std::process::exit(1);
    }
}

fn session_state(m: &RawModule, s: CK_SESSION_HANDLE) -> CK_RV {
    let mut info = CK_SESSION_INFO::default();
    // SAFETY: valid out pointer.
    unsafe { m.f().C_GetSessionInfo.unwrap()(s, &mut info) }
}

fn main() {
    let module = std::env::args().nth(1).expect("usage: fork-check SHIM");
    let m = RawModule::load(std::path::Path::new(&module));
    check("parent C_Initialize", m.initialize(), CKR_OK);
    let slot = m.first_slot();
    let parent_session = m.open_rw(slot);
    check(
        "parent C_Login",
        m.login(parent_session, tests::PIN),
        CKR_OK,
    );

    // SAFETY: this process has a single thread (the shim starts none).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut n = 0;
        // SAFETY: valid out pointer.
        let rv = unsafe { m.f().C_GetSlotList.unwrap()(CK_TRUE, std::ptr::null_mut(), &mut n) };
        check(
            "child before C_Initialize",
            rv,
            CKR_CRYPTOKI_NOT_INITIALIZED,
        );
        check("child C_Initialize", m.initialize(), CKR_OK);
        check(
            "child uses the parent's session",
            session_state(&m, parent_session),
            CKR_SESSION_HANDLE_INVALID,
        );
        let own = m.open_rw(slot);
        check("child's own session", session_state(&m, own), CKR_OK);
        // SAFETY: ending the child without running the parent's atexit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        println!("child failed: status {status}");
        std::process::exit(1);
    }
    check(
        "parent's session after the fork",
        session_state(&m, parent_session),
        CKR_OK,
    );
    check(
        "parent C_Login again",
        m.login(parent_session, tests::PIN),
        CKR_USER_ALREADY_LOGGED_IN,
    );
    println!("fork ok");
}
