//! The parity scenario (`tests/src/parity.rs`): the same raw PKCS#11 calls directly against
//! SoftHSM2 and through the proxy; every return code and deterministic output must match.

use cryptoki_sys::CKR_OK;
use tests::parity;

#[test]
fn direct_and_proxy_answer_the_same_call_by_call() {
    let report = parity::run();
    for must in parity::MUST_SUCCEED {
        let step = report.expected.iter().find(|s| s.0 == *must).expect(must);
        assert_eq!(
            step.1, CKR_OK,
            "{must} failed directly: the scenario is wrong"
        );
    }
    assert!(
        report.expected.len() > 150,
        "only {} steps",
        report.expected.len()
    );
    let mismatches = report.mismatches();
    assert!(
        mismatches.is_empty(),
        "{} calls differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
