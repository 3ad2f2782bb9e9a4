//! Test helper: calls functions of the module given with lengths no buffer has (2^31, 2^46,
//! CK_ULONG::MAX) over small buffers, and a C_MessageEncryptInit with a CK_GCM_MESSAGE_PARAMS
//! (the size of a CK_GCM_PARAMS, another layout), printing each answer. Through the shim,
//! none may abort the process: the test that runs it checks that it exits normally.

use std::ptr;

use cryptoki_sys::*;
use tests::raw::RawModule;

fn main() {
    let module = std::env::args().nth(1).expect("usage: huge-lengths MODULE");
    let m = RawModule::load(std::path::Path::new(&module));
    assert_eq!(m.initialize(), CKR_OK);
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, tests::PIN), CKR_OK);
    let f = m.f();
    let mut small = [0u8; 16];
    let mut out = [0u8; 16];
    for huge in [1u64 << 31, 1 << 46, u64::MAX] {
        let n = huge as CK_ULONG;
        let mut out_len: CK_ULONG = out.len() as CK_ULONG;
        // SAFETY: deliberately wrong lengths over small, valid buffers: what is tested is that
        // the module refuses them instead of reading past the buffers or aborting.
        unsafe {
            println!(
                "{huge:#x} C_SeedRandom {:#x}",
                f.C_SeedRandom.unwrap()(s, small.as_mut_ptr(), n)
            );
            println!(
                "{huge:#x} C_Login {:#x}",
                f.C_Login.unwrap()(s, CKU_USER, small.as_mut_ptr(), n)
            );
            let mut sha = CK_MECHANISM {
                mechanism: CKM_SHA256,
                pParameter: ptr::null_mut(),
                ulParameterLen: 0,
            };
            f.C_DigestInit.unwrap()(s, &mut sha);
            println!(
                "{huge:#x} C_Digest {:#x}",
                f.C_Digest.unwrap()(s, small.as_mut_ptr(), n, out.as_mut_ptr(), &mut out_len)
            );
            let mut cbc = CK_MECHANISM {
                mechanism: CKM_AES_CBC,
                pParameter: small.as_mut_ptr().cast(),
                ulParameterLen: n,
            };
            println!(
                "{huge:#x} C_EncryptInit(parameter) {:#x}",
                f.C_EncryptInit.unwrap()(s, &mut cbc, 1)
            );
            let mut label = [CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: small.as_mut_ptr().cast(),
                ulValueLen: n,
            }];
            println!(
                "{huge:#x} C_FindObjectsInit(value) {:#x}",
                f.C_FindObjectsInit.unwrap()(s, label.as_mut_ptr(), 1)
            );
            f.C_FindObjectsFinal.unwrap()(s);
            let mut gcm = CK_GCM_MESSAGE_PARAMS {
                pIv: small.as_mut_ptr(),
                ulIvLen: n,
                ulIvFixedBits: 0,
                ivGenerator: CKG_GENERATE_COUNTER,
                pTag: out.as_mut_ptr(),
                ulTagBits: 128,
            };
            let mut mech = CK_MECHANISM {
                mechanism: CKM_AES_GCM,
                pParameter: (&mut gcm as *mut CK_GCM_MESSAGE_PARAMS).cast(),
                ulParameterLen: std::mem::size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG,
            };
            let init: CK_C_MessageEncryptInit = m.symbol(b"C_MessageEncryptInit\0").flatten();
            if let Some(message_encrypt_init) = init {
                println!(
                    "{huge:#x} C_MessageEncryptInit(IV length) {:#x}",
                    message_encrypt_init(s, &mut mech, 1)
                );
                let mut right = CK_GCM_MESSAGE_PARAMS { ulIvLen: 12, ..gcm };
                let mut mech = CK_MECHANISM {
                    pParameter: (&mut right as *mut CK_GCM_MESSAGE_PARAMS).cast(),
                    ..mech
                };
                println!(
                    "C_MessageEncryptInit(CK_GCM_MESSAGE_PARAMS) {:#x}",
                    message_encrypt_init(s, &mut mech, 1)
                );
            }
        }
    }
    println!("huge lengths: process alive");
}
