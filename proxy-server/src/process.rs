//! What every process of the server (router and workers) sets up for itself: its log, its
//! open-file limit, and glibc's `getrandom` answered by the system call for the release
//! baseline.

/// Log lines on stderr, filtered by `RUST_LOG` (default `info`); workers write to the same
/// stderr as the router, each line carrying its worker's span.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init()
    } else {
        builder.init()
    }
}

/// Raises the open-file limit to its hard maximum: every client connection is a descriptor.
pub fn raise_file_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// glibc's `getrandom` (2.25 and later), which Rust's standard library calls, answered with
/// the system call itself, so that the server runs on glibc 2.17 and later (the release
/// baseline, `.ci/check-baseline`); on a kernel without the call (before 3.17) `ENOSYS` makes
/// the standard library fall back to `/dev/urandom`.
///
/// # Safety
/// `buf` must be writable for `len` bytes, as for getrandom(2).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[no_mangle]
pub unsafe extern "C" fn getrandom(
    buf: *mut std::ffi::c_void,
    len: libc::size_t,
    flags: libc::c_uint,
) -> libc::ssize_t {
    libc::syscall(libc::SYS_getrandom, buf, len, flags) as libc::ssize_t
}
