//! What every process of the server (router and workers) sets up for itself: its log, its
//! open-file limit, and glibc's `getrandom` answered by the system call for the release
//! baseline.

/// Log lines on stderr, filtered by `RUST_LOG` (default `info`); workers write to the same
/// stderr as the router, each line carrying its worker's span.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A call trace an operator switched on shows whatever the level (`worker::trace`).
    let filter = match "pkcs11_proxy_server::trace=info".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    // Colours for a person at a terminal; none in a file, a journal or a collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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

protocol::getrandom_by_syscall!();
