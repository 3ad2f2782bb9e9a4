//! The loaded vendor library and the only `unsafe` calls into it.
//!
//! Loading follows PKCS#11 v3.0 §5.2: `C_GetInterface` (the default "PKCS 11" interface) when
//! the library exports it, else `C_GetFunctionList`. Either way the first part of the table is
//! the v2.40 `CK_FUNCTION_LIST`, which is all this server calls. An application's worker
//! initialises the library with the application's own C_Initialize arguments and finalises it
//! at the application's C_Finalize; a shared worker initialises it once with
//! `CKF_OS_LOCKING_OK` (v2.40 §5.4) and finalises it when it stops.

use std::ffi::{c_void, CString};
use std::ptr;

use cryptoki_sys::*;
use libloading::Library;

use protocol::frame::MAX_DATA_LEN;
use protocol::handshake::InitArgs;
use protocol::shape::{Array, Bytes, Out};

use super::mechanism::{CMechanism, CMsgParam};
use super::template::CTemplate;
use super::ulong::{to_ulong, wire};

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

/// Output of a size-query call: return value, reported length, and the bytes written.
pub struct Output {
    pub rv: CK_RV,
    pub len: CK_ULONG,
    pub data: Vec<u8>,
    /// A completed size query ([`Out::complete`]): the real call's return value, length and
    /// bytes.
    pub completed: Option<(CK_RV, CK_ULONG, Vec<u8>)>,
}

/// The vendor library, loaded and initialised.
pub struct Backend {
    list: &'static CK_FUNCTION_LIST,
    /// The v3.0 table, when the library offers the "PKCS 11" interface at 3.x.
    list3: Option<&'static CK_FUNCTION_LIST_3_0>,
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

impl Backend {
    /// Loads `path` and finds its function table; C_Initialize is [`Backend::initialize`]'s.
    pub fn load(path: &str) -> Result<Self, String> {
        // SAFETY: loading a PKCS#11 module runs its initialisers; that is the point.
        let library = unsafe { Library::new(path) }
            .map_err(|e| format!("cannot load PKCS#11 module {path}: {e}"))?;
        let (list, list3) = Self::function_list(&library, path)?;
        Ok(Self {
            list,
            list3,
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

    #[allow(clippy::type_complexity)]
    fn function_list(
        library: &Library,
        path: &str,
    ) -> Result<
        (
            &'static CK_FUNCTION_LIST,
            Option<&'static CK_FUNCTION_LIST_3_0>,
        ),
        String,
    > {
        // SAFETY: symbol types are those of the PKCS#11 headers; the table a module returns
        // lives as long as the module, which this server never unloads.
        unsafe {
            if let Ok(get_interface) = library.get::<CK_C_GetInterface>(b"C_GetInterface\0") {
                if let Some(get_interface) = *get_interface {
                    let mut iface: *mut CK_INTERFACE = ptr::null_mut();
                    let name = c"PKCS 11".as_ptr() as *mut CK_UTF8CHAR;
                    let rv = get_interface(name, ptr::null_mut(), &mut iface, 0);
                    if rv == CKR_OK && !iface.is_null() && !(*iface).pFunctionList.is_null() {
                        let list = &*((*iface).pFunctionList as *const CK_FUNCTION_LIST);
                        let list3 = (list.version.major >= 3)
                            .then(|| &*((*iface).pFunctionList as *const CK_FUNCTION_LIST_3_0));
                        return Ok((list, list3));
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
            Ok((&*list, None))
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

    /// Calls a `(session, in, in_len, out, out_len)` function with the caller's shapes.
    pub fn update(
        &self,
        f: Option<UpdateFn>,
        session: CK_SESSION_HANDLE,
        input: &Bytes,
        capacity: Out,
    ) -> Output {
        let Some(f) = f else {
            return Output::rv(CKR_FUNCTION_NOT_SUPPORTED);
        };
        let (ip, il) = match raw(input) {
            Ok(r) => r,
            Err(rv) => return Output::rv(rv),
        };
        with_out_buffer(capacity, |out, len| {
            // SAFETY: ip is NULL or a live buffer of il bytes; out/len come from
            // with_out_buffer.
            unsafe { f(session, ip, il, out, len) }
        })
    }

    /// Calls a `(session, out, out_len)` function (the `*Final` functions, GetOperationState).
    pub fn final_(&self, f: Option<FinalFn>, session: CK_SESSION_HANDLE, capacity: Out) -> Output {
        let Some(f) = f else {
            return Output::rv(CKR_FUNCTION_NOT_SUPPORTED);
        };
        // SAFETY: out/len come from with_out_buffer.
        with_out_buffer(capacity, |out, len| unsafe { f(session, out, len) })
    }

    /// Calls a `(session, in, in_len)` function.
    pub fn input(&self, f: Option<InputFn>, session: CK_SESSION_HANDLE, input: &Bytes) -> CK_RV {
        let Some(f) = f else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let (p, len) = match raw(input) {
            Ok(r) => r,
            Err(rv) => return rv,
        };
        // SAFETY: NULL or a live buffer of len bytes; the vendor only reads it.
        unsafe { f(session, p, len) }
    }

    /// Calls a `(session, mechanism, key)` function (the `*Init` functions).
    pub fn init(
        &self,
        f: Option<InitFn>,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let Some(f) = f else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        // SAFETY: CMechanism keeps its parameter storage alive for its own lifetime.
        unsafe { f(session, mech.as_mut_ptr(), key) }
    }

    /// Calls a `(session)` function.
    pub fn session(&self, f: Option<SessionFn>, session: CK_SESSION_HANDLE) -> CK_RV {
        let Some(f) = f else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        // SAFETY: no pointer argument.
        unsafe { f(session) }
    }

    pub fn get_info(&self, info: *mut CK_INFO) -> CK_RV {
        let f = func!(self.C_GetInfo);
        // SAFETY: NULL (the caller's) or a valid, writable CK_INFO.
        unsafe { f(info) }
    }

    /// C_GetSlotList or C_GetMechanismList-style calls: a list of CK_ULONGs with a size query.
    pub fn slot_list(
        &self,
        token_present: bool,
        capacity: Out,
    ) -> (CK_RV, CK_ULONG, Vec<CK_ULONG>) {
        let Some(f) = self.list.C_GetSlotList else {
            return (CKR_FUNCTION_NOT_SUPPORTED, 0, vec![]);
        };
        let present = CK_BBOOL::from(token_present);
        // SAFETY: ptr/len come from with_ulong_buffer.
        with_ulong_buffer(capacity, |p, n| unsafe { f(present, p, n) })
    }

    pub fn mechanism_list(
        &self,
        slot: CK_SLOT_ID,
        capacity: Out,
    ) -> (CK_RV, CK_ULONG, Vec<CK_ULONG>) {
        let Some(f) = self.list.C_GetMechanismList else {
            return (CKR_FUNCTION_NOT_SUPPORTED, 0, vec![]);
        };
        // SAFETY: ptr/len come from with_ulong_buffer.
        with_ulong_buffer(capacity, |p, n| unsafe { f(slot, p, n) })
    }

    pub fn get_slot_info(&self, slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
        let f = func!(self.C_GetSlotInfo);
        // SAFETY: NULL or a valid, writable struct.
        unsafe { f(slot, info) }
    }

    pub fn get_token_info(&self, slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
        let f = func!(self.C_GetTokenInfo);
        // SAFETY: NULL or a valid, writable struct.
        unsafe { f(slot, info) }
    }

    pub fn get_mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        mech: CK_MECHANISM_TYPE,
        info: *mut CK_MECHANISM_INFO,
    ) -> CK_RV {
        let f = func!(self.C_GetMechanismInfo);
        // SAFETY: NULL or a valid, writable struct.
        unsafe { f(slot, mech, info) }
    }

    /// `reserved`: the caller's `pReserved` was not NULL (it must be: its contents cannot
    /// cross the wire, so the vendor sees a pointer to nothing it may use, and answers).
    pub fn wait_for_slot_event(
        &self,
        flags: CK_FLAGS,
        reserved: bool,
        slot: *mut CK_SLOT_ID,
    ) -> CK_RV {
        let f = func!(self.C_WaitForSlotEvent);
        let reserved = if reserved {
            EMPTY_RESERVED.as_ptr() as *mut c_void
        } else {
            ptr::null_mut()
        };
        // SAFETY: NULL or a valid, writable slot id; pReserved NULL or a readable dummy.
        unsafe { f(flags, slot, reserved) }
    }

    /// `label` is NULL (the caller's) or 32 bytes.
    pub fn init_token(&self, slot: CK_SLOT_ID, pin: Option<&[u8]>, label: &Bytes) -> CK_RV {
        let f = func!(self.C_InitToken);
        let Some((p, n)) = opt_bytes(pin) else {
            return CKR_ARGUMENTS_BAD;
        };
        let label = match label {
            Array::Null(_) => ptr::null_mut(),
            Array::Given(l) if l.len() == 32 => l.as_ptr() as *mut u8,
            Array::Given(_) => return CKR_ARGUMENTS_BAD,
        };
        // SAFETY: pin and label are NULL or live buffers of the stated lengths.
        unsafe { f(slot, p, n, label) }
    }

    pub fn init_pin(&self, session: CK_SESSION_HANDLE, pin: Option<&[u8]>) -> CK_RV {
        let f = func!(self.C_InitPIN);
        let Some((p, n)) = opt_bytes(pin) else {
            return CKR_ARGUMENTS_BAD;
        };
        // SAFETY: pin is a live buffer of n bytes (or NULL).
        unsafe { f(session, p, n) }
    }

    pub fn set_pin(
        &self,
        session: CK_SESSION_HANDLE,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> CK_RV {
        let f = func!(self.C_SetPIN);
        let (Some((op, on)), Some((np, nn))) = (opt_bytes(old), opt_bytes(new)) else {
            return CKR_ARGUMENTS_BAD;
        };
        // SAFETY: both PINs are live buffers (or NULL).
        unsafe { f(session, op, on, np, nn) }
    }

    pub fn open_session(
        &self,
        slot: CK_SLOT_ID,
        flags: CK_FLAGS,
        session: *mut CK_SESSION_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_OpenSession);
        // SAFETY: no application callback is passed to the vendor (notifications are not
        // forwarded); session is writable.
        unsafe { f(slot, flags, ptr::null_mut(), None, session) }
    }

    pub fn get_session_info(
        &self,
        session: CK_SESSION_HANDLE,
        info: *mut CK_SESSION_INFO,
    ) -> CK_RV {
        let f = func!(self.C_GetSessionInfo);
        // SAFETY: NULL or a valid, writable struct.
        unsafe { f(session, info) }
    }

    pub fn set_operation_state(
        &self,
        session: CK_SESSION_HANDLE,
        state: &Bytes,
        enc: CK_OBJECT_HANDLE,
        auth: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_SetOperationState);
        let (p, n) = match raw(state) {
            Ok(r) => r,
            Err(rv) => return rv,
        };
        // SAFETY: state is NULL or a live buffer of n bytes.
        unsafe { f(session, p, n, enc, auth) }
    }

    pub fn login(
        &self,
        session: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: Option<&[u8]>,
    ) -> CK_RV {
        let f = func!(self.C_Login);
        let Some((p, n)) = opt_bytes(pin) else {
            return CKR_ARGUMENTS_BAD;
        };
        // SAFETY: pin is a live buffer of n bytes (or NULL).
        unsafe { f(session, user, p, n) }
    }

    /// C_CloseAllSessions (v2.40 §5.6.2): only in an application's own worker.
    pub fn close_all_sessions(&self, slot: CK_SLOT_ID) -> CK_RV {
        let f = func!(self.C_CloseAllSessions);
        // SAFETY: a plain value argument.
        unsafe { f(slot) }
    }

    pub fn create_object(
        &self,
        session: CK_SESSION_HANDLE,
        t: &mut CTemplate,
        obj: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_CreateObject);
        // SAFETY: CTemplate owns every buffer its attributes point to.
        unsafe { f(session, t.as_mut_ptr(), t.count(), obj) }
    }

    pub fn copy_object(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        t: &mut CTemplate,
        obj: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_CopyObject);
        // SAFETY: as create_object.
        unsafe { f(session, object, t.as_mut_ptr(), t.count(), obj) }
    }

    pub fn destroy_object(&self, session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> CK_RV {
        let f = func!(self.C_DestroyObject);
        // SAFETY: no pointer argument.
        unsafe { f(session, object) }
    }

    pub fn get_object_size(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        size: *mut CK_ULONG,
    ) -> CK_RV {
        let f = func!(self.C_GetObjectSize);
        // SAFETY: size is NULL or writable.
        unsafe { f(session, object, size) }
    }

    pub fn get_attribute_value(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        t: &mut CTemplate,
    ) -> CK_RV {
        let f = func!(self.C_GetAttributeValue);
        // SAFETY: every non-NULL pValue points to a buffer of ulValueLen bytes owned by t.
        unsafe { f(session, object, t.as_mut_ptr(), t.count()) }
    }

    pub fn set_attribute_value(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        t: &mut CTemplate,
    ) -> CK_RV {
        let f = func!(self.C_SetAttributeValue);
        // SAFETY: as create_object.
        unsafe { f(session, object, t.as_mut_ptr(), t.count()) }
    }

    pub fn find_objects_init(&self, session: CK_SESSION_HANDLE, t: &mut CTemplate) -> CK_RV {
        let f = func!(self.C_FindObjectsInit);
        // SAFETY: as create_object.
        unsafe { f(session, t.as_mut_ptr(), t.count()) }
    }

    /// C_FindObjects into a buffer of `max` handles (`None`: the caller's NULL buffer, with
    /// its `max_count`), and a count pointer when `count` is true.
    pub fn find_objects(
        &self,
        session: CK_SESSION_HANDLE,
        max: Result<usize, CK_ULONG>,
        count: bool,
    ) -> (CK_RV, Vec<CK_OBJECT_HANDLE>) {
        let Some(f) = self.list.C_FindObjects else {
            return (CKR_FUNCTION_NOT_SUPPORTED, vec![]);
        };
        let mut found = vec![0 as CK_OBJECT_HANDLE; *max.as_ref().unwrap_or(&0)];
        let (p, max_c) = match max {
            Ok(n) => (found.as_mut_ptr(), n as CK_ULONG),
            Err(n) => (ptr::null_mut(), n),
        };
        let mut n: CK_ULONG = 0;
        let np = if count {
            &mut n as *mut CK_ULONG
        } else {
            ptr::null_mut()
        };
        // SAFETY: found holds max handles (or is the caller's NULL); np is NULL or writable.
        let rv = unsafe { f(session, p, max_c, np) };
        found.truncate(usize::try_from(n).unwrap_or(0).min(found.len()));
        (rv, found)
    }

    pub fn digest_key(&self, session: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
        let f = func!(self.C_DigestKey);
        // SAFETY: no pointer argument.
        unsafe { f(session, key) }
    }

    pub fn digest_init(&self, session: CK_SESSION_HANDLE, mech: &mut CMechanism) -> CK_RV {
        let f = func!(self.C_DigestInit);
        // SAFETY: CMechanism keeps its parameter alive.
        unsafe { f(session, mech.as_mut_ptr()) }
    }

    pub fn verify(&self, session: CK_SESSION_HANDLE, data: &Bytes, sig: &Bytes) -> CK_RV {
        let f = func!(self.C_Verify);
        let ((dp, dn), (sp, sn)) = match (raw(data), raw(sig)) {
            (Ok(d), Ok(s)) => (d, s),
            (Err(rv), _) | (_, Err(rv)) => return rv,
        };
        // SAFETY: NULL or live buffers of the stated lengths, only read.
        unsafe { f(session, dp, dn, sp, sn) }
    }

    pub fn generate_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        t: &mut CTemplate,
        key: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_GenerateKey);
        // SAFETY: owned mechanism and template.
        unsafe { f(session, mech.as_mut_ptr(), t.as_mut_ptr(), t.count(), key) }
    }

    pub fn generate_key_pair(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        public: &mut CTemplate,
        private: &mut CTemplate,
        keys: (*mut CK_OBJECT_HANDLE, *mut CK_OBJECT_HANDLE),
    ) -> CK_RV {
        let f = func!(self.C_GenerateKeyPair);
        // SAFETY: owned mechanism and templates; key handles writable.
        unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                public.as_mut_ptr(),
                public.count(),
                private.as_mut_ptr(),
                private.count(),
                keys.0,
                keys.1,
            )
        }
    }

    pub fn wrap_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        capacity: Out,
    ) -> Output {
        let Some(f) = self.list.C_WrapKey else {
            return Output::rv(CKR_FUNCTION_NOT_SUPPORTED);
        };
        let m = mech.as_mut_ptr();
        // SAFETY: owned mechanism; out/len come from with_out_buffer.
        with_out_buffer(capacity, |out, len| unsafe {
            f(session, m, wrapping, key, out, len)
        })
    }

    pub fn unwrap_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &Bytes,
        t: &mut CTemplate,
        key: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_UnwrapKey);
        let (wp, n) = match raw(wrapped) {
            Ok(r) => r,
            Err(rv) => return rv,
        };
        // SAFETY: owned mechanism, template and wrapped bytes.
        unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                unwrapping,
                wp,
                n,
                t.as_mut_ptr(),
                t.count(),
                key,
            )
        }
    }

    pub fn derive_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        base: CK_OBJECT_HANDLE,
        t: &mut CTemplate,
        key: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let f = func!(self.C_DeriveKey);
        // SAFETY: owned mechanism and template.
        unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                base,
                t.as_mut_ptr(),
                t.count(),
                key,
            )
        }
    }

    /// C_GenerateRandom into a buffer of `len` bytes (`Err`: the caller's NULL buffer, with
    /// its length).
    pub fn generate_random(
        &self,
        session: CK_SESSION_HANDLE,
        len: Result<usize, CK_ULONG>,
    ) -> (CK_RV, Vec<u8>) {
        let Some(f) = self.list.C_GenerateRandom else {
            return (CKR_FUNCTION_NOT_SUPPORTED, vec![]);
        };
        let mut out = vec![0u8; *len.as_ref().unwrap_or(&0)];
        let (p, n) = match len {
            Ok(n) => (out.as_mut_ptr(), n as CK_ULONG),
            Err(n) => (ptr::null_mut(), n),
        };
        // SAFETY: out holds n writable bytes, or p is the caller's NULL.
        let rv = unsafe { f(session, p, n) };
        (rv, out)
    }
}

/// PKCS#11 v3.0 functions. Each answers CKR_FUNCTION_NOT_SUPPORTED when the vendor library
/// has no v3.0 interface.
impl Backend {
    fn f3<T>(&self, pick: impl FnOnce(&CK_FUNCTION_LIST_3_0) -> Option<T>) -> Option<T> {
        self.list3.and_then(pick)
    }

    pub fn login_user(
        &self,
        session: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: Option<&[u8]>,
        username: &Bytes,
    ) -> CK_RV {
        let Some(f) = self.f3(|l| l.C_LoginUser) else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let (Some((p, n)), Ok((up, un))) = (opt_bytes(pin), raw(username)) else {
            return CKR_ARGUMENTS_BAD;
        };
        // SAFETY: NULL or live buffers of the stated lengths.
        unsafe { f(session, user, p, n, up, un) }
    }

    pub fn session_cancel(&self, session: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
        let Some(f) = self.f3(|l| l.C_SessionCancel) else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        // SAFETY: no pointer argument.
        unsafe { f(session, flags) }
    }

    /// C_EncryptMessage / C_DecryptMessage: `(session, param, aad, in, out)`.
    pub fn crypt_message(
        &self,
        decrypt: bool,
        session: CK_SESSION_HANDLE,
        param: &mut CMsgParam,
        aad: &Bytes,
        input: &Bytes,
        capacity: Out,
    ) -> Output {
        let f = if decrypt {
            self.f3(|l| l.C_DecryptMessage)
        } else {
            self.f3(|l| l.C_EncryptMessage)
        };
        let Some(f) = f else {
            return Output::rv(CKR_FUNCTION_NOT_SUPPORTED);
        };
        let ((ap, al), (ip, il)) = match (raw(aad), raw(input)) {
            (Ok(a), Ok(i)) => (a, i),
            (Err(rv), _) | (_, Err(rv)) => return Output::rv(rv),
        };
        let (p, pl) = param.ptr_len();
        with_out_buffer(capacity, |out, len| {
            // SAFETY: param owns its buffers; aad/input are NULL or live buffers; out/len from
            // with_out_buffer.
            unsafe { f(session, p, pl, ap, al, ip, il, out, len) }
        })
    }

    /// C_EncryptMessageBegin / C_DecryptMessageBegin: `(session, param, aad)`.
    pub fn crypt_message_begin(
        &self,
        decrypt: bool,
        session: CK_SESSION_HANDLE,
        param: &mut CMsgParam,
        aad: &Bytes,
    ) -> CK_RV {
        let f = if decrypt {
            self.f3(|l| l.C_DecryptMessageBegin)
        } else {
            self.f3(|l| l.C_EncryptMessageBegin)
        };
        let Some(f) = f else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let (ap, al) = match raw(aad) {
            Ok(r) => r,
            Err(rv) => return rv,
        };
        let (p, pl) = param.ptr_len();
        // SAFETY: param owns its buffers; aad is NULL or a live buffer.
        unsafe { f(session, p, pl, ap, al) }
    }

    /// C_EncryptMessageNext / C_DecryptMessageNext: `(session, param, in, out, flags)`.
    pub fn crypt_message_next(
        &self,
        decrypt: bool,
        session: CK_SESSION_HANDLE,
        param: &mut CMsgParam,
        input: &Bytes,
        capacity: Out,
        flags: CK_FLAGS,
    ) -> Output {
        let f = if decrypt {
            self.f3(|l| l.C_DecryptMessageNext)
        } else {
            self.f3(|l| l.C_EncryptMessageNext)
        };
        let Some(f) = f else {
            return Output::rv(CKR_FUNCTION_NOT_SUPPORTED);
        };
        let (ip, il) = match raw(input) {
            Ok(r) => r,
            Err(rv) => return Output::rv(rv),
        };
        let (p, pl) = param.ptr_len();
        with_out_buffer(capacity, |out, len| {
            // SAFETY: as crypt_message.
            unsafe { f(session, p, pl, ip, il, out, len, flags) }
        })
    }

    /// C_SignMessage, or C_SignMessageNext with `next` (a NULL signature length there means
    /// "not the last part", v3.0 §5.14.4).
    pub fn sign_message(
        &self,
        next: bool,
        session: CK_SESSION_HANDLE,
        param: &mut CMsgParam,
        input: &Bytes,
        capacity: Out,
    ) -> Output {
        let f = if next {
            self.f3(|l| l.C_SignMessageNext)
        } else {
            self.f3(|l| l.C_SignMessage)
        };
        let Some(f) = f else {
            return Output::rv(CKR_FUNCTION_NOT_SUPPORTED);
        };
        let (ip, il) = match raw(input) {
            Ok(r) => r,
            Err(rv) => return Output::rv(rv),
        };
        let (p, pl) = param.ptr_len();
        with_out_buffer(capacity, |out, len| {
            // SAFETY: as crypt_message.
            unsafe { f(session, p, pl, ip, il, out, len) }
        })
    }

    /// C_SignMessageBegin / C_VerifyMessageBegin: `(session, param)`.
    pub fn message_begin(
        &self,
        verify: bool,
        session: CK_SESSION_HANDLE,
        param: &mut CMsgParam,
    ) -> CK_RV {
        let f = if verify {
            self.f3(|l| l.C_VerifyMessageBegin)
        } else {
            self.f3(|l| l.C_SignMessageBegin)
        };
        let Some(f) = f else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let (p, pl) = param.ptr_len();
        // SAFETY: param owns its buffers.
        unsafe { f(session, p, pl) }
    }

    /// C_VerifyMessage, or C_VerifyMessageNext with `next` (a NULL signature there means "not
    /// the last part", v3.0 §5.16.4).
    pub fn verify_message(
        &self,
        next: bool,
        session: CK_SESSION_HANDLE,
        param: &mut CMsgParam,
        input: &Bytes,
        signature: &Bytes,
    ) -> CK_RV {
        let f = if next {
            self.f3(|l| l.C_VerifyMessageNext)
        } else {
            self.f3(|l| l.C_VerifyMessage)
        };
        let Some(f) = f else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let ((ip, il), (sp, sl)) = match (raw(input), raw(signature)) {
            (Ok(i), Ok(s)) => (i, s),
            (Err(rv), _) | (_, Err(rv)) => return rv,
        };
        let (p, pl) = param.ptr_len();
        // SAFETY: NULL or live buffers of the stated lengths.
        unsafe { f(session, p, pl, ip, il, sp, sl) }
    }
}

impl Output {
    /// An answer with a return value only.
    pub fn rv(rv: CK_RV) -> Self {
        Self {
            rv,
            len: 0,
            data: Vec::new(),
            completed: None,
        }
    }
}

/// A PIN as pointer and length; `None` if its length does not fit a CK_ULONG.
fn opt_bytes(b: Option<&[u8]>) -> Option<(*mut u8, CK_ULONG)> {
    match b {
        None => Some((ptr::null_mut(), 0)),
        Some(b) => Some((b.as_ptr() as *mut u8, CK_ULONG::try_from(b.len()).ok()?)),
    }
}

/// What an empty input's pointer is: valid and non-NULL, as the caller's was.
static EMPTY_INPUT: [u8; 1] = [0];

/// Caller bytes as the vendor gets them: NULL stays NULL with the caller's count; an empty
/// array is a valid pointer with a count of 0 (DESIGN.md, "The vendor decides").
fn raw(b: &Bytes) -> Result<(*mut u8, CK_ULONG), CK_RV> {
    match b {
        Array::Null(n) => Ok((ptr::null_mut(), to_ulong(*n)?)),
        Array::Given(v) if v.is_empty() => Ok((EMPTY_INPUT.as_ptr() as *mut u8, 0)),
        Array::Given(v) => Ok((
            v.as_ptr() as *mut u8,
            CK_ULONG::try_from(v.len()).map_err(|_| CKR_ARGUMENTS_BAD)?,
        )),
    }
}

/// Runs a two-call function (v2.40 §5.2) with the caller's shapes: its buffer (at most `max`
/// elements, what one frame carries) or NULL, and its length pointer holding the caller's
/// value, or NULL. Returns the vendor's return value, the length it left and the elements
/// it wrote; the reported length is trusted only up to the buffer size.
fn with_out_array<T: Copy + Default>(
    out: Out,
    max: u64,
    call: impl FnOnce(*mut T, *mut CK_ULONG) -> CK_RV,
) -> (CK_RV, CK_ULONG, Vec<T>) {
    let elements = match (out.buffer, out.capacity()) {
        (true, Some(n)) => n.min(max) as usize,
        // A buffer without a length pointer: the vendor cannot know its size, and answers.
        (true, None) => 1,
        (false, _) => 0,
    };
    let mut buf = vec![T::default(); elements];
    let mut len: CK_ULONG = match out.len {
        Some(_) if out.buffer => buf.len() as CK_ULONG,
        // A size query starts from the caller's value: the vendor may leave it there.
        Some(n) => to_ulong(n).unwrap_or(CK_ULONG::MAX),
        None => 0,
    };
    let p = if out.buffer {
        buf.as_mut_ptr()
    } else {
        ptr::null_mut()
    };
    let lp = if out.len.is_some() {
        &mut len as *mut CK_ULONG
    } else {
        ptr::null_mut()
    };
    let rv = call(p, lp);
    if rv == CKR_OK && out.capacity().is_some() {
        buf.truncate(usize::try_from(len).unwrap_or(usize::MAX).min(buf.len()));
    } else {
        buf.clear();
    }
    (rv, len, buf)
}

/// [`with_out_array`] for bytes, as an [`Output`]. A size query the shim asked to complete
/// ([`Out::completes`]) is followed, once the vendor answered it CKR_OK, by the real call with
/// a buffer of the length the vendor gave, as the application's next call would be (v2.40
/// §5.2): the vendor sees the size query and then the call, in that order. A real call that
/// still finds the buffer too small leaves the operation active, as after the query alone: it
/// is not reported.
fn with_out_buffer(out: Out, mut call: impl FnMut(*mut u8, *mut CK_ULONG) -> CK_RV) -> Output {
    let (rv, len, data) = with_out_array(out, MAX_DATA_LEN, &mut call);
    let mut output = Output {
        rv,
        len,
        data,
        completed: None,
    };
    if out.completes() && rv == CKR_OK && wire(len) <= MAX_DATA_LEN {
        let real = with_out_array(Out::buffer(wire(len)), MAX_DATA_LEN, &mut call);
        if real.0 != CKR_BUFFER_TOO_SMALL {
            output.completed = Some(real);
        }
    }
    output
}

/// Most entries of a slot or mechanism list buffer.
const MAX_LIST_LEN: u64 = 65_536;

/// [`with_out_array`] for arrays of CK_ULONG (slot and mechanism lists).
fn with_ulong_buffer(
    out: Out,
    call: impl FnOnce(*mut CK_ULONG, *mut CK_ULONG) -> CK_RV,
) -> (CK_RV, CK_ULONG, Vec<CK_ULONG>) {
    with_out_array(out, MAX_LIST_LEN, call)
}
