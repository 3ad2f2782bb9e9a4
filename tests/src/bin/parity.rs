//! `parity [--kryoptic [--v3.2 | --matrix]]`: runs the direct-versus-proxy parity scenario (or,
//! with `--v3.2`, the PKCS#11 3.2 and post-quantum scenario of `tests::v3_2`; with
//! `--matrix`, the edge-case matrix of `tests::matrix`) on a throwaway
//! SoftHSM2 token (or kryoptic token) and a server it starts, prints one line per call and a
//! summary `N passed, N failed`. Exits non-zero when any call differs.
//!
//! kryoptic runs here, in a process of its own, rather than in a test thread: OpenSSL, linked
//! into it, leaves thread-local destructors that crash a thread ending after the module was
//! unloaded.

/// The edge-case matrix (`tests::matrix`) on two kryoptic tokens alike: one loaded directly,
/// one behind a server.
fn matrix_on_kryoptic(direct_token: &tests::kryoptic::Kryoptic) -> tests::parity::Report {
    use tests::raw::RawModule;
    let proxy_token = tests::kryoptic::Kryoptic::new("parity");
    let server = proxy_token.server("tcp://127.0.0.1:0");
    let dir = tests::TempDir::new("matrix");
    let direct = RawModule::load(&tests::private_copy(
        &tests::kryoptic::module_path(),
        direct_token.dir.path(),
    ));
    let (key, value) = direct_token.env();
    // SAFETY: the matrix passes valid buffers except where it tests their shapes.
    let expected = tests::with_env(&[(key, &value)], || unsafe {
        tests::matrix::run(&direct, || direct.initialize())
    });
    let proxy = RawModule::load(&tests::private_copy(&tests::shim_path(), dir.path()));
    let address = [("PKCS11_PROXY_SOCKET", server.address.as_str())];
    // SAFETY: as above.
    let got = tests::with_env(&address, || unsafe {
        tests::matrix::run(&proxy, || proxy.initialize())
    });
    std::mem::forget(direct);
    std::mem::forget(proxy);
    tests::parity::Report { expected, got }
}

fn main() {
    let arg = |a: &str| std::env::args().any(|b| b == a);
    let report = if arg("--kryoptic") {
        let k = tests::kryoptic::Kryoptic::new("parity");
        let (key, value) = k.env();
        let module = tests::private_copy(&tests::kryoptic::module_path(), k.dir.path());
        let server_module = tests::kryoptic::module_path();
        if arg("--v3.2") {
            let slot = tests::kryoptic::SLOT;
            tests::v3_2::run_on(&module, &server_module, (key, &value), slot)
        } else if arg("--matrix") {
            matrix_on_kryoptic(&k)
        } else {
            tests::parity::run_on(&module, &server_module, (key, &value))
        }
    } else {
        tests::parity::run()
    };
    let mut failed = 0;
    for (e, g) in report.expected.iter().zip(&report.got) {
        if e == g {
            println!("ok    {:45} rv={:#x}", e.0, e.1);
        } else {
            failed += 1;
            println!(
                "DIFF  {:45} direct rv={:#x} {:02x?} / proxy rv={:#x} {:02x?}",
                e.0, e.1, e.2, g.1, g.2
            );
        }
    }
    let passed = report.expected.len().min(report.got.len()) - failed;
    if report.expected.len() != report.got.len() {
        failed += 1;
        println!(
            "DIFF  step count: {} direct, {} proxy",
            report.expected.len(),
            report.got.len()
        );
    }
    println!("parity: {passed} passed, {failed} failed");
    std::process::exit(i32::from(failed > 0));
}
