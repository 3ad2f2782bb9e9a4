//! Test helper: one short-lived application, as a Fabric CA enrollment is: loads a PKCS#11
//! module, C_Initialize, C_Login (CKR_USER_ALREADY_LOGGED_IN accepted, as Fabric does),
//! generates a token EC key pair with a unique CKA_ID, signs
//! with it (Fabric's path), C_Finalize; prints `ok` or the first failing step and its CK_RV,
//! and exits 0 or 1.

use cryptoki_sys::*;
use tests::fabric::{fabric_sign_data, make_token_key_with_id};
use tests::raw::RawModule;

fn main() {
    let mut args = std::env::args().skip(1);
    let module = args.next().expect("usage: short-app MODULE ID");
    let id = args.next().expect("usage: short-app MODULE ID");
    let m = RawModule::load(std::path::Path::new(&module));
    let result = (|| {
        step("C_Initialize", m.initialize())?;
        let mut slots = [0 as CK_SLOT_ID; 8];
        let mut n = slots.len() as CK_ULONG;
        // SAFETY: a buffer of n slots.
        let rv = unsafe { m.f().C_GetSlotList.unwrap()(CK_TRUE, slots.as_mut_ptr(), &mut n) };
        step("C_GetSlotList", rv)?;
        let mut s = 0;
        // SAFETY: valid out pointer.
        let rv = unsafe {
            m.f().C_OpenSession.unwrap()(
                slots[0],
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                std::ptr::null_mut(),
                None,
                &mut s,
            )
        };
        step("C_OpenSession", rv)?;
        // As Fabric does, a login that finds the token logged in already is a success.
        let rv = m.login(s, tests::PIN);
        step(
            "C_Login",
            if rv == CKR_USER_ALREADY_LOGGED_IN {
                CKR_OK
            } else {
                rv
            },
        )?;
        step(
            "C_GenerateKeyPair",
            make_token_key_with_id(&m, s, id.as_bytes()),
        )?;
        // SAFETY: an open, logged-in session.
        step("C_Sign", unsafe {
            fabric_sign_data(&m, s, id.as_bytes(), &[7u8; 32])
        })?;
        // SAFETY: NULL is the valid argument.
        step("C_Finalize", unsafe {
            m.f().C_Finalize.unwrap()(std::ptr::null_mut())
        })
    })();
    match result {
        Ok(()) => println!("ok"),
        Err(what) => {
            println!("{what}");
            std::process::exit(1);
        }
    }
}

fn step(name: &str, rv: CK_RV) -> Result<(), String> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(format!("{name} failed: {rv:#x}"))
    }
}
