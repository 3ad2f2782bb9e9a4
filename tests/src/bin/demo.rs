//! The main job, end to end: a throwaway SoftHSM2 token, the real server, and an application
//! (here the `cryptoki` crate) that signs and verifies through the shim, as a Fabric peer does.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use tests::{direct_context, proxy_context, ProxyServer, SoftHsm, TempDir, PIN};

/// DER OID of P-256.
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn main() {
    let hsm = SoftHsm::new("demo");
    println!(
        "1. SoftHSM2 token `demo` initialised in {}",
        hsm.dir.path().display()
    );
    let mut server = ProxyServer::start(&hsm, "tcp://127.0.0.1:0");
    println!(
        "2. pkcs11-proxy-server started, listening on {}",
        server.address
    );

    let dir = TempDir::new("demo");
    let ctx = proxy_context(&server, dir.path());
    let info = ctx.get_library_info().unwrap();
    println!(
        "3. shim loaded, C_Initialize with PKCS11_PROXY_SOCKET={}; backend: {} {}",
        server.address,
        info.manufacturer_id(),
        info.library_description()
    );
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let token = ctx.get_token_info(slot).unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(PIN.into())))
        .unwrap();
    println!(
        "4. session opened on slot {} (token `{}`), logged in as user",
        slot.id(),
        token.label()
    );

    let id = b"demo-key".to_vec();
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::EcParams(P256.to_vec()),
                Attribute::Verify(true),
                Attribute::Token(true),
                Attribute::Id(id.clone()),
            ],
            &[
                Attribute::Sign(true),
                Attribute::Token(true),
                Attribute::Sensitive(true),
                Attribute::Id(id.clone()),
            ],
        )
        .unwrap();
    println!(
        "5. EC P-256 key pair generated in the token (CKA_ID {:?})",
        String::from_utf8_lossy(&id)
    );

    let message = b"a Fabric endorsement";
    let digest = session.digest(&Mechanism::Sha256, message).unwrap();
    let signature = session.sign(&Mechanism::Ecdsa, private, &digest).unwrap();
    println!(
        "6. signed SHA-256({:?}) with CKM_ECDSA through the proxy: {} bytes",
        String::from_utf8_lossy(message),
        signature.len()
    );
    session
        .verify(&Mechanism::Ecdsa, public, &digest, &signature)
        .unwrap();
    println!("7. signature verified through the proxy");

    // The same key, found by the vendor library directly: the proxy really used the token.
    let direct = direct_context(&hsm);
    let dsession = direct.open_ro_session(slot).unwrap();
    let found = dsession
        .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Id(id)])
        .unwrap();
    dsession
        .verify(&Mechanism::Ecdsa, found[0], &digest, &signature)
        .unwrap();
    let point = match dsession
        .get_attributes(found[0], &[AttributeType::EcPoint])
        .unwrap()
        .first()
    {
        Some(Attribute::EcPoint(p)) => p.len(),
        _ => 0,
    };
    println!("8. signature verified again by SoftHSM2 directly, with the public key found in the token (CKA_EC_POINT of {point} bytes)");
    let mut bad = signature.clone();
    bad[10] ^= 1;
    let refused = session
        .verify(&Mechanism::Ecdsa, public, &digest, &bad)
        .unwrap_err();
    println!("9. a tampered signature is refused through the proxy: {refused}");

    // A proxy restart is invisible: the shim reopens the session, logs in again and finds the
    // key again by its identifying attributes.
    let address = server.address.clone();
    server.kill();
    let mut server = ProxyServer::start(&hsm, &address);
    let signature = session.sign(&Mechanism::Ecdsa, private, &digest).unwrap();
    session
        .verify(&Mechanism::Ecdsa, public, &digest, &signature)
        .unwrap();
    println!("10. server killed (SIGKILL) and restarted on {address}: the same session and key handles signed and verified again, no error seen by the application");

    drop(session);
    drop(ctx);
    let status = server.stop();
    println!("11. server stopped with SIGTERM: {status:?}");
    println!("demo: OK");
}
