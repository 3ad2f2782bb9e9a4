//! Glue both binaries need to run on the release baseline (glibc 2.17, `.ci/check-baseline`).
//! It is a macro so that the function is defined in the binary itself (the shim's `cdylib`,
//! the server's executable), where the linker finds it before glibc's: a definition in this
//! library crate would be linked in only if something named it first.

/// Defines glibc's `getrandom` (2.25 and later), which Rust's standard library calls, as the
/// system call itself, so that the binary runs on glibc 2.17 and later. Where glibc has its
/// own, a process that loads the shim finds glibc's first; on a kernel without the call
/// (before 3.17) `ENOSYS` makes the standard library fall back to `/dev/urandom`. The calling
/// crate depends on `libc`.
#[macro_export]
macro_rules! getrandom_by_syscall {
    () => {
        /// glibc's `getrandom`, answered by the system call (see
        /// `protocol::getrandom_by_syscall`).
        ///
        /// # Safety
        /// `buf` must be writable for `len` bytes, as for getrandom(2).
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        #[no_mangle]
        pub unsafe extern "C" fn getrandom(
            buf: *mut ::std::ffi::c_void,
            len: ::libc::size_t,
            flags: ::libc::c_uint,
        ) -> ::libc::ssize_t {
            ::libc::syscall(::libc::SYS_getrandom, buf, len, flags) as ::libc::ssize_t
        }
    };
}
