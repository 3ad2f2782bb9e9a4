//! The loaded vendor library and the only `unsafe` calls into it.
//!
//! Loading follows PKCS#11 v3.0 §5.2: `C_GetInterface` (the default "PKCS 11" interface) when
//! the library exports it, else `C_GetFunctionList`. Either way the first part of the table is
//! the v2.40 `CK_FUNCTION_LIST`, which is all this server calls. An application's worker
//! initialises the library with the application's own C_Initialize arguments and finalises it
//! at the application's C_Finalize; a shared worker initialises it once with
//! `CKF_OS_LOCKING_OK` (v2.40 §5.4) and finalises it when it stops.
//!
//! The calls themselves: `calls` (v2.40), `message` (v3.0), with the caller's buffers shaped
//! by `buffers`.

use std::ffi::{c_void, CString};
use std::ptr;

use cryptoki_sys::*;
use libloading::Library;

use protocol::handshake::InitArgs;

pub use self::buffers::Output;

/// What `pReserved` points to when the application's was not NULL: its contents cannot
/// cross the wire, so the vendor sees an empty string, and answers as it does.
static EMPTY_RESERVED: [u8; 8] = [0; 8];

/// The mutex callbacks a worker gives the vendor library in place of the application's
/// (v2.40 §5.4.1, CK_CREATEMUTEX and the three others): the application's own functions live
/// in another process, so the worker answers them with its own locks, which is what they are
/// for: serialising the library's threads.
mod os_mutex {
    use std::ffi::c_void;

    use cryptoki_sys::*;
    use parking_lot::lock_api::RawMutex as _;

    type Lock = parking_lot::RawMutex;

    pub unsafe extern "C" fn create(out: *mut *mut c_void) -> CK_RV {
        if out.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        *out = Box::into_raw(Box::new(Lock::INIT)).cast();
        CKR_OK
    }

    pub unsafe extern "C" fn destroy(m: *mut c_void) -> CK_RV {
        if m.is_null() {
            return CKR_MUTEX_BAD;
        }
        drop(Box::from_raw(m.cast::<Lock>()));
        CKR_OK
    }

    pub unsafe extern "C" fn lock(m: *mut c_void) -> CK_RV {
        match m.cast::<Lock>().as_ref() {
            Some(l) => {
                l.lock();
                CKR_OK
            }
            None => CKR_MUTEX_BAD,
        }
    }

    pub unsafe extern "C" fn unlock(m: *mut c_void) -> CK_RV {
        match m.cast::<Lock>().as_ref() {
            Some(l) if l.is_locked() => {
                l.unlock();
                CKR_OK
            }
            Some(_) => CKR_MUTEX_NOT_LOCKED,
            None => CKR_MUTEX_BAD,
        }
    }
}

/// A vendor function with the shape `(session, in, in_len, out, out_len)`.
pub type UpdateFn =
    unsafe extern "C" fn(CK_SESSION_HANDLE, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG) -> CK_RV;
/// A vendor function with the shape `(session, out, out_len)`.
pub type FinalFn = unsafe extern "C" fn(CK_SESSION_HANDLE, *mut u8, *mut CK_ULONG) -> CK_RV;
/// A vendor function with the shape `(session, in, in_len)`.
pub type InputFn = unsafe extern "C" fn(CK_SESSION_HANDLE, *mut u8, CK_ULONG) -> CK_RV;
/// A vendor function with the shape `(session, mechanism, key)`.
pub type InitFn =
    unsafe extern "C" fn(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) -> CK_RV;
/// A vendor function with the shape `(session)`.
pub type SessionFn = unsafe extern "C" fn(CK_SESSION_HANDLE) -> CK_RV;

/// The vendor library, loaded and initialised.
pub struct Backend {
    list: &'static CK_FUNCTION_LIST,
    /// The v3.0 table, when the library offers the "PKCS 11" interface at 3.x.
    list3: Option<&'static CK_FUNCTION_LIST_3_0>,
    /// The v3.2 table, when the library offers the "PKCS 11" interface at 3.2 or later.
    list32: Option<&'static CK_FUNCTION_LIST_3_2>,
    _library: Library,
}

// SAFETY: the table itself is immutable. Calls come from the threads serving the
// application's connections, so the library sees the application's own concurrency, under the
// locking the application asked for at C_Initialize (v2.40 §6.7.6); a shared worker
// initialises it with CKF_OS_LOCKING_OK.
unsafe impl Send for Backend {}
unsafe impl Sync for Backend {}

/// Picks a function pointer out of the table, or answers CKR_FUNCTION_NOT_SUPPORTED for a
/// NULL entry.
macro_rules! func {
    ($self:ident . $name:ident) => {
        match $self.list.$name {
            Some(f) => f,
            None => return CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}

mod buffers;
mod calls;
mod message;
mod v3_2;

impl Backend {
    /// Loads `path` and finds its function table; C_Initialize is [`Backend::initialize`]'s.
    pub fn load(path: &str) -> Result<Self, String> {
        // SAFETY: loading a PKCS#11 module runs its initialisers; that is the point.
        let library = unsafe { Library::new(path) }
            .map_err(|e| format!("cannot load PKCS#11 module {path}: {e}"))?;
        let list = Self::function_list(&library, path)?;
        // SAFETY: a table of version 3.x (3.2 and later) starts with the 3.0 (3.2) table's
        // fields (v3.0 §5.2, v3.2 CK_FUNCTION_LIST_3_2): the interface's own layout.
        let at_least = |major, minor| (list.version.major, list.version.minor) >= (major, minor);
        let list3 = at_least(3, 0)
            .then(|| unsafe { &*(list as *const CK_FUNCTION_LIST).cast::<CK_FUNCTION_LIST_3_0>() });
        let list32 = at_least(3, 2)
            .then(|| unsafe { &*(list as *const CK_FUNCTION_LIST).cast::<CK_FUNCTION_LIST_3_2>() });
        Ok(Self {
            list,
            list3,
            list32,
            _library: library,
        })
    }

    /// C_Initialize (v2.40 §5.4.1) with the shape of the application's arguments: `None` is
    /// a NULL pointer; otherwise the same flags, this worker's own OS mutexes
    /// ([`os_mutex`]) for each callback the application set, and a non-NULL `pReserved`
    /// where the application's was. `init_args` (`--init-args`, for modules that take their
    /// configuration there) is passed as `pReserved` in every case, with CKF_OS_LOCKING_OK
    /// when the application gave no arguments.
    pub fn initialize(&self, args: Option<InitArgs>, init_args: Option<&str>) -> CK_RV {
        let f = func!(self.C_Initialize);
        let Ok(reserved) = init_args.map(CString::new).transpose() else {
            return CKR_ARGUMENTS_BAD;
        };
        let args = match (args, &reserved) {
            (None, None) => {
                // SAFETY: NULL is a valid argument (no locking requested).
                return unsafe { f(ptr::null_mut()) };
            }
            (None, Some(_)) => InitArgs {
                flags: super::ulong::wire(CKF_OS_LOCKING_OK),
                callbacks: 0,
                reserved: true,
            },
            (Some(a), _) => a,
        };
        let Ok(flags) = super::ulong::to_ulong(args.flags) else {
            return CKR_ARGUMENTS_BAD;
        };
        let has = |bit: u8| args.callbacks & (1 << bit) != 0;
        let p_reserved = match (&reserved, args.reserved) {
            (Some(s), _) => s.as_ptr() as *mut c_void,
            (None, true) => EMPTY_RESERVED.as_ptr() as *mut c_void,
            (None, false) => ptr::null_mut(),
        };
        let mut c = CK_C_INITIALIZE_ARGS {
            CreateMutex: has(0).then_some(os_mutex::create as _),
            DestroyMutex: has(1).then_some(os_mutex::destroy as _),
            LockMutex: has(2).then_some(os_mutex::lock as _),
            UnlockMutex: has(3).then_some(os_mutex::unlock as _),
            flags,
            pReserved: p_reserved,
        };
        // SAFETY: c is a valid CK_C_INITIALIZE_ARGS living across the call; the strings it
        // points to live until the end of this function, and the module copies what it keeps.
        unsafe { f(&mut c as *mut _ as *mut c_void) }
    }

    /// The vendor's "PKCS 11" function table (v3.0 §5.2): at 3.2 when the library offers it
    /// (so that its 3.2 functions are forwarded, even where its default interface is older),
    /// else its default interface, else C_GetFunctionList's (a 2.x library).
    fn function_list(library: &Library, path: &str) -> Result<&'static CK_FUNCTION_LIST, String> {
        // SAFETY: symbol types are those of the PKCS#11 headers; the table a module returns
        // lives as long as the module, which this server never unloads.
        unsafe {
            if let Ok(get_interface) = library.get::<CK_C_GetInterface>(b"C_GetInterface\0") {
                if let Some(get_interface) = *get_interface {
                    let name = c"PKCS 11".as_ptr() as *mut CK_UTF8CHAR;
                    let mut v3_2 = CK_VERSION { major: 3, minor: 2 };
                    for version in [&mut v3_2 as *mut CK_VERSION, ptr::null_mut()] {
                        let mut iface: *mut CK_INTERFACE = ptr::null_mut();
                        let rv = get_interface(name, version, &mut iface, 0);
                        if rv == CKR_OK && !iface.is_null() && !(*iface).pFunctionList.is_null() {
                            return Ok(&*((*iface).pFunctionList as *const CK_FUNCTION_LIST));
                        }
                    }
                }
            }
            let get_list = library
                .get::<CK_C_GetFunctionList>(b"C_GetFunctionList\0")
                .map_err(|e| format!("{path} is not a PKCS#11 module: {e}"))?;
            let get_list = (*get_list).ok_or("C_GetFunctionList is NULL")?;
            let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
            let rv = get_list(&mut list);
            if rv != CKR_OK || list.is_null() {
                return Err(format!(
                    "{path}: C_GetFunctionList failed with {}",
                    crate::rv::name(rv)
                ));
            }
            Ok(&*list)
        }
    }

    /// The vendor's v3.0 table, if it has one.
    pub fn list3(&self) -> Option<&'static CK_FUNCTION_LIST_3_0> {
        self.list3
    }

    /// The cryptoki version of the interface in use, for the log.
    pub fn interface_version(&self) -> (u8, u8) {
        (self.list.version.major, self.list.version.minor)
    }

    /// The vendor's function table, to pick functions for the shape helpers below.
    pub fn list(&self) -> &'static CK_FUNCTION_LIST {
        self.list
    }

    /// C_Finalize (v2.40 §5.4.2).
    pub fn finalize(&self) -> CK_RV {
        let f = func!(self.C_Finalize);
        // SAFETY: NULL is the only valid argument.
        unsafe { f(ptr::null_mut()) }
    }
}

/// The C_Initialize arguments of an instance the worker itself owns (the probe's, a shared
/// one): the OS's own locking.
pub fn os_locking() -> InitArgs {
    InitArgs {
        flags: crate::worker::ulong::wire(CKF_OS_LOCKING_OK),
        callbacks: 0,
        reserved: false,
    }
}
