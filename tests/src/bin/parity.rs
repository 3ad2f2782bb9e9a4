//! `parity [--kryoptic [--v3.2]]`: runs the direct-versus-proxy parity scenario (or, with
//! `--v3.2`, the PKCS#11 3.2 and post-quantum scenario of `tests::v3_2`) on a throwaway
//! SoftHSM2 token (or kryoptic token) and a server it starts, prints one line per call and a
//! summary `N passed, N failed`. Exits non-zero when any call differs.
//!
//! kryoptic runs here, in a process of its own, rather than in a test thread: OpenSSL, linked
//! into it, leaves thread-local destructors that crash a thread ending after the module was
//! unloaded.

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
