//! `parity`: runs the direct-versus-proxy parity scenario on a throwaway SoftHSM2 token and a
//! server it starts, prints one line per call and a summary `N passed, N failed`.
//! Exits non-zero when any call differs.

fn main() {
    let report = tests::parity::run();
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
