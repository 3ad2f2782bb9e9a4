//! The differential edge-case matrix (`tests/src/matrix.rs`): every PKCS#11 function the shim
//! exports, with every argument shape, before, during and after initialisation, directly on
//! SoftHSM2 and through the proxy; every return code and deterministic output must match.

use cryptoki_sys::CKR_OK;
use tests::raw::RawModule;
use tests::{matrix, private_copy, shim_path, with_env, ProxyServer, SoftHsm, TempDir};

#[test]
fn every_argument_shape_is_answered_as_the_vendor_answers_it() {
    let (direct_hsm, proxy_hsm) = (SoftHsm::new("matrix"), SoftHsm::new("matrix"));
    let server = ProxyServer::start(&proxy_hsm, "tcp://127.0.0.1:0");
    let dir = TempDir::new("matrix");

    let conf = direct_hsm.conf.to_string_lossy().into_owned();
    let direct = RawModule::load(&direct_hsm.module_copy());
    // SAFETY: the matrix passes valid buffers except where it tests their shapes, and only
    // shapes SoftHSM2 checks itself.
    let expected = with_env(&[("SOFTHSM2_CONF", &conf)], || unsafe {
        matrix::run(&direct, || direct.initialize())
    });

    let proxy = RawModule::load(&private_copy(&shim_path(), dir.path()));
    // SAFETY: as above.
    let got = with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || unsafe {
        matrix::run(&proxy, || proxy.initialize())
    });

    assert_eq!(
        expected.iter().find(|o| o.0 == "C_Initialize").unwrap().1,
        CKR_OK
    );
    let ok = expected.iter().filter(|o| o.1 == CKR_OK).count();
    assert!(
        ok > 300,
        "only {ok} cases succeed directly: the matrix does too little work"
    );
    let differences: Vec<String> = expected
        .iter()
        .zip(&got)
        .filter(|(e, g)| e != g)
        .map(|(e, g)| {
            format!(
                "{}: direct {:#x} {:02x?} / proxy {:#x} {:02x?}",
                e.0, e.1, e.2, g.1, g.2
            )
        })
        .collect();
    eprintln!(
        "{} cases compared ({} succeed directly), {} differ",
        expected.len(),
        ok,
        differences.len()
    );
    assert_eq!(expected.len(), got.len());
    assert!(
        differences.is_empty(),
        "{} cases differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
}
