//! A PKCS#11 module loaded by hand, to call its C functions with exact arguments (NULL
//! buffers, short buffers, bad pointers) that high-level bindings never produce.

use std::path::Path;
use std::ptr;

use cryptoki_sys::*;

/// A loaded module and its v2.40 function table.
pub struct RawModule {
    list: &'static CK_FUNCTION_LIST,
    _lib: libloading::Library,
}

impl RawModule {
    /// Loads `path` (not initialised).
    pub fn load(path: &Path) -> Self {
        // SAFETY: loading a PKCS#11 module and reading its function table, as any consumer does.
        unsafe {
            let lib = libloading::Library::new(path).expect("dlopen");
            let get: libloading::Symbol<CK_C_GetFunctionList> =
                lib.get(b"C_GetFunctionList\0").expect("C_GetFunctionList");
            let mut list = ptr::null_mut();
            assert_eq!(get.unwrap()(&mut list), CKR_OK);
            Self {
                list: &*list,
                _lib: lib,
            }
        }
    }

    /// The function table.
    pub fn f(&self) -> &CK_FUNCTION_LIST {
        self.list
    }

    /// C_Initialize with CKF_OS_LOCKING_OK.
    pub fn initialize(&self) -> CK_RV {
        let mut args = CK_C_INITIALIZE_ARGS {
            flags: CKF_OS_LOCKING_OK,
            ..Default::default()
        };
        // SAFETY: valid arguments.
        unsafe { self.list.C_Initialize.unwrap()(&mut args as *mut _ as *mut _) }
    }

    /// C_Initialize with CKF_OS_LOCKING_OK and a `pReserved` string (NSS softokn's
    /// configuration, for instance).
    pub fn initialize_with_reserved(&self, reserved: &std::ffi::CStr) -> CK_RV {
        let mut args = CK_C_INITIALIZE_ARGS {
            flags: CKF_OS_LOCKING_OK,
            pReserved: reserved.as_ptr() as *mut _,
            ..Default::default()
        };
        // SAFETY: valid arguments; the string outlives the call.
        unsafe { self.list.C_Initialize.unwrap()(&mut args as *mut _ as *mut _) }
    }

    /// The exported symbol `name` (NUL-terminated), as a C function of type `T`.
    ///
    /// # Safety
    /// `T` must be the symbol's real type.
    pub unsafe fn symbol<T: Copy>(&self, name: &[u8]) -> Option<T> {
        self._lib.get::<T>(name).ok().map(|s| *s)
    }

    /// The 3.0 function table of the default "PKCS 11" interface, if the module has one.
    pub fn f3(&self) -> Option<&CK_FUNCTION_LIST_3_0> {
        // SAFETY: C_GetInterface as the v3.0 specification defines it.
        unsafe {
            let get: libloading::Symbol<CK_C_GetInterface> =
                self._lib.get(b"C_GetInterface\0").ok()?;
            let mut iface: *mut CK_INTERFACE = ptr::null_mut();
            let rv = get.unwrap()(
                c"PKCS 11".as_ptr() as *mut u8,
                ptr::null_mut(),
                &mut iface,
                0,
            );
            if rv != CKR_OK || iface.is_null() {
                return None;
            }
            let list = &*((*iface).pFunctionList as *const CK_FUNCTION_LIST_3_0);
            (list.version.major >= 3).then_some(list)
        }
    }

    /// The "PKCS 11" 3.2 function table (C_GetInterface asked for version 3.2), if the module
    /// offers it.
    pub fn f32(&self) -> Option<&CK_FUNCTION_LIST_3_2> {
        // SAFETY: C_GetInterface as the v3.0 specification defines it.
        unsafe {
            let get: libloading::Symbol<CK_C_GetInterface> =
                self._lib.get(b"C_GetInterface\0").ok()?;
            let mut iface: *mut CK_INTERFACE = ptr::null_mut();
            let mut version = CK_VERSION { major: 3, minor: 2 };
            let rv = get.unwrap()(c"PKCS 11".as_ptr() as *mut u8, &mut version, &mut iface, 0);
            if rv != CKR_OK || iface.is_null() {
                return None;
            }
            Some(&*((*iface).pFunctionList as *const CK_FUNCTION_LIST_3_2))
        }
    }

    /// The versions of the "PKCS 11" interfaces C_GetInterfaceList lists, in its order (a
    /// vendor's own interfaces, NSS softokn's among them, left out).
    pub fn interface_versions(&self) -> Vec<(u8, u8)> {
        // SAFETY: C_GetInterfaceList with the two-call convention; each table starts with its
        // CK_VERSION.
        unsafe {
            let Ok(get) = self
                ._lib
                .get::<CK_C_GetInterfaceList>(b"C_GetInterfaceList\0")
            else {
                return Vec::new();
            };
            let get = get.unwrap();
            let mut n = 0;
            assert_eq!(get(ptr::null_mut(), &mut n), CKR_OK);
            let mut list = vec![
                CK_INTERFACE {
                    pInterfaceName: ptr::null_mut(),
                    pFunctionList: ptr::null_mut(),
                    flags: 0,
                };
                n as usize
            ];
            assert_eq!(get(list.as_mut_ptr(), &mut n), CKR_OK);
            list.iter()
                .filter(|i| {
                    std::ffi::CStr::from_ptr(i.pInterfaceName as *const std::ffi::c_char).to_bytes()
                        == b"PKCS 11"
                })
                .map(|i| {
                    let v = *(i.pFunctionList as *const CK_VERSION);
                    (v.major, v.minor)
                })
                .collect()
        }
    }

    /// The first slot with a token.
    pub fn first_slot(&self) -> CK_SLOT_ID {
        let mut slots = [0 as CK_SLOT_ID; 8];
        let mut n = slots.len() as CK_ULONG;
        // SAFETY: buffer of n slots.
        let rv = unsafe { self.list.C_GetSlotList.unwrap()(CK_TRUE, slots.as_mut_ptr(), &mut n) };
        assert_eq!(rv, CKR_OK);
        assert!(n > 0, "no token");
        slots[0]
    }

    /// Opens a read-write session on `slot`.
    pub fn open_rw(&self, slot: CK_SLOT_ID) -> CK_SESSION_HANDLE {
        let mut h = 0;
        // SAFETY: valid pointer for the handle.
        let rv = unsafe {
            self.list.C_OpenSession.unwrap()(
                slot,
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                ptr::null_mut(),
                None,
                &mut h,
            )
        };
        assert_eq!(rv, CKR_OK);
        h
    }

    /// C_Login as user with `pin`.
    pub fn login(&self, session: CK_SESSION_HANDLE, pin: &str) -> CK_RV {
        // SAFETY: pin buffer of its length.
        unsafe {
            self.list.C_Login.unwrap()(
                session,
                CKU_USER,
                pin.as_ptr() as *mut u8,
                pin.len() as CK_ULONG,
            )
        }
    }
}
