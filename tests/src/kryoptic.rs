//! kryoptic, the second PKCS#11 implementation the suite runs against (issue 27): a software
//! token in Rust with the PKCS#11 3.2 interface, built by `tests/install-deps.sh` against
//! OpenSSL 3.5 into `target/kryoptic/`, with its own throwaway token store (SQLite) per test.

use std::path::{Path, PathBuf};

use cryptoki_sys::*;

use crate::raw::RawModule;
use crate::{with_env, ProxyServer, TempDir, PIN, SO_PIN};

/// The slot kryoptic's configuration gives the token.
pub const SLOT: CK_SLOT_ID = 42;

/// The kryoptic module `tests/install-deps.sh` built.
pub fn module_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/kryoptic/build/release/libkryoptic_pkcs11.so")
}

/// A kryoptic configuration with one token labelled `label`, initialised with the test PINs,
/// in its own directory.
pub struct Kryoptic {
    pub dir: TempDir,
    /// For `KRYOPTIC_CONF`.
    pub conf: PathBuf,
    pub label: String,
}

impl Kryoptic {
    pub fn new(label: &str) -> Self {
        let module = module_path();
        assert!(
            module.exists(),
            "{} is missing: tests/install-deps.sh builds it",
            module.display()
        );
        let dir = TempDir::new("kryoptic");
        let conf = dir.path().join("kryoptic.conf");
        std::fs::write(
            &conf,
            format!(
                "[[slots]]\nslot = {SLOT}\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
                dir.path().join("token.sql").display()
            ),
        )
        .unwrap();
        let k = Self {
            dir,
            conf,
            label: label.to_string(),
        };
        k.init_token();
        k
    }

    /// A proxy server listening on `listen` that loads kryoptic with this configuration.
    pub fn server(&self, listen: &str) -> ProxyServer {
        let (key, value) = self.env();
        let module = module_path();
        ProxyServer::start_args(
            &["--module", module.to_str().unwrap(), "--listen", listen],
            &[(key, &value)],
        )
    }

    /// `KRYOPTIC_CONF` for a process that loads the module.
    pub fn env(&self) -> (&'static str, String) {
        ("KRYOPTIC_CONF", self.conf.to_string_lossy().into_owned())
    }

    /// A private copy of the module (its own instance in this process), initialised. Forget
    /// it rather than drop it (see [`Kryoptic::new`]'s own).
    pub fn module(&self) -> RawModule {
        let m = RawModule::load(&crate::private_copy(&module_path(), self.dir.path()));
        let (k, v) = self.env();
        assert_eq!(with_env(&[(k, &v)], || m.initialize()), CKR_OK);
        m
    }

    /// C_InitToken with the SO PIN and the label, then the user PIN (v2.40 §5.5.4, §5.5.5).
    fn init_token(&self) {
        let m = self.module();
        let mut label = [b' '; 32];
        label[..self.label.len()].copy_from_slice(self.label.as_bytes());
        // SAFETY: valid PIN and label buffers; a session of `m`.
        unsafe {
            let f = m.f();
            let so = SO_PIN.as_bytes();
            assert_eq!(
                f.C_InitToken.unwrap()(
                    SLOT,
                    so.as_ptr() as *mut u8,
                    so.len() as CK_ULONG,
                    label.as_mut_ptr()
                ),
                CKR_OK
            );
            let s = m.open_rw(SLOT);
            assert_eq!(
                f.C_Login.unwrap()(s, CKU_SO, so.as_ptr() as *mut u8, so.len() as CK_ULONG),
                CKR_OK
            );
            assert_eq!(
                f.C_InitPIN.unwrap()(s, PIN.as_ptr() as *mut u8, PIN.len() as CK_ULONG),
                CKR_OK
            );
            f.C_Finalize.unwrap()(std::ptr::null_mut());
        }
        // Never unloaded: OpenSSL, linked into it, leaves thread-local destructors in its
        // code, which run when this thread ends.
        std::mem::forget(m);
    }
}
