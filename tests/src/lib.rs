//! Test harness: a throwaway SoftHSM2 token, the real `pkcs11-proxy-server` binary, and
//! private copies of the PKCS#11 modules so that several instances live in one process.

pub mod delay;
pub mod fabric;
pub mod kryoptic;
pub mod matrix;
pub mod parity;
pub mod pki;
pub mod raw;
pub mod relay;
pub mod v3_2;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Debian's SoftHSM2 module, the vendor library of every test.
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of test tokens.
pub const PIN: &str = "1234";
/// The SO PIN of test tokens.
pub const SO_PIN: &str = "5678";

static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Serialises the moments when a PKCS#11 module reads the process environment (C_Initialize).
static ENV_LOCK: Mutex<()> = Mutex::new(());

/// `target/<profile>`, where the shim and the server were built.
pub fn build_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("P11_BUILD_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The built shim.
pub fn shim_path() -> PathBuf {
    let p = build_dir().join("libpkcs11_shim.so");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release` (or the matching profile) first",
        p.display()
    );
    p
}

/// The built server.
pub fn server_path() -> PathBuf {
    let p = build_dir().join("pkcs11-proxy-server");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first",
        p.display()
    );
    p
}

/// A directory removed at drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "p11proxy-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A SoftHSM2 configuration with one initialised token, in its own directory.
pub struct SoftHsm {
    pub dir: TempDir,
    pub conf: PathBuf,
    pub label: String,
}

impl SoftHsm {
    pub fn new(label: &str) -> Self {
        let dir = TempDir::new("softhsm");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        init_token(&conf, label);
        Self {
            dir,
            conf,
            label: label.to_string(),
        }
    }

    /// Initialises another token, labelled `label`, in SoftHSM2's free slot.
    pub fn add_token(&self, label: &str) {
        init_token(&self.conf, label);
    }

    /// A private copy of the SoftHSM2 module, so this process can hold several instances.
    pub fn module_copy(&self) -> PathBuf {
        private_copy(Path::new(SOFTHSM), self.dir.path())
    }
}

/// `softhsm2-util --init-token --free` with the test PINs, under configuration `conf`.
fn init_token(conf: &Path, label: &str) {
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            PIN,
            "--so-pin",
            SO_PIN,
        ])
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("softhsm2-util (Debian package softhsm2) must be installed");
    assert!(
        out.status.success(),
        "softhsm2-util failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies a shared object under a unique name in `dir`: `dlopen` of a new path gives a new
/// instance with its own globals.
pub fn private_copy(src: &Path, dir: &Path) -> PathBuf {
    let name = format!(
        "{}-{}.so",
        src.file_stem().unwrap().to_string_lossy(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let dst = dir.join(name);
    std::fs::copy(src, &dst).expect("copy module");
    dst
}

/// Runs `f` (a C_Initialize) with the given environment variables set, under a process-wide
/// lock, since PKCS#11 modules read their configuration from the environment then.
pub fn with_env<T>(vars: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let r = f();
    for (k, _) in vars {
        std::env::remove_var(k);
    }
    r
}

/// A running `pkcs11-proxy-server`, stopped with SIGTERM at drop.
pub struct ProxyServer {
    child: Child,
    /// The address it listens on (real port).
    pub address: String,
    /// Everything it wrote on stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ProxyServer {
    /// Starts the server on SoftHSM `hsm`, listening on `listen` (e.g. `tcp://127.0.0.1:0`).
    pub fn start(hsm: &SoftHsm, listen: &str) -> Self {
        Self::start_with(hsm, &["--module", SOFTHSM, "--listen", listen], &[])
    }

    /// Starts the server on SoftHSM `hsm` on a free loopback TCP port, with `flags` besides.
    pub fn start_tcp_with(hsm: &SoftHsm, flags: &[&str]) -> Self {
        let mut args = vec!["--module", SOFTHSM, "--listen", "tcp://127.0.0.1:0"];
        args.extend_from_slice(flags);
        Self::start_with(hsm, &args, &[])
    }

    /// As [`ProxyServer::start_tcp_with`], with the metrics and health endpoints on another
    /// free port (`metrics_address`).
    pub fn start_with_metrics(hsm: &SoftHsm) -> Self {
        Self::start_tcp_with(hsm, &["--metrics-listen", "127.0.0.1:0"])
    }

    /// Starts the server with the given arguments and extra environment.
    pub fn start_with(hsm: &SoftHsm, args: &[&str], env: &[(&str, &str)]) -> Self {
        let conf = hsm.conf.to_string_lossy().into_owned();
        let mut all_env = vec![("SOFTHSM2_CONF", conf.as_str())];
        all_env.extend_from_slice(env);
        Self::start_args(args, &all_env)
    }

    /// Starts the server with exactly these arguments and extra environment.
    pub fn start_args(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_program(&server_path(), args, env)
    }

    /// Starts `program` (the server, or a wrapper that runs it) and waits for the server's
    /// `listening on` line.
    pub fn start_program(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(program);
        // Its own process group (router and workers): signals reach all of it, and no other
        // test's exiting processes can make the kernel continue it (orphaned process groups
        // with stopped members get SIGCONT).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start pkcs11-proxy-server");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Logged first, so that whoever learns the address finds the line too.
                let listening = line
                    .split("listening on ")
                    .nth(1)
                    .map(|r| r.trim().to_string());
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                if let Some(rest) = listening {
                    let _ = tx.send(rest);
                }
            }
        });
        let address = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.split_whitespace().next().unwrap().to_string(),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not report `listening on`; log: {:?}",
                    log.lock().unwrap()
                );
            }
        };
        Self {
            child,
            address,
            log,
        }
    }

    /// The HOST:PORT of `--metrics-listen`, from the `listening on` line.
    pub fn metrics_address(&self) -> String {
        let log = self.log.lock().unwrap();
        let line = log
            .iter()
            .find(|l| l.contains("listening on"))
            .expect("listening line");
        let url = line
            .split("http://")
            .nth(1)
            .expect("the server was started with --metrics-listen");
        url.trim_end_matches("/metrics").to_string()
    }

    /// Kills the server outright (SIGKILL), router and workers at once (its process group),
    /// as a crash of its host would, and reaps the router.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Sends a signal to the server's router and workers at once, its process group (SIGSTOP
    /// to freeze it, SIGCONT to thaw...). Workers a router started after it went away are
    /// not in it.
    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling the process group of our own child.
        unsafe { libc::killpg(self.child.id() as i32, sig) };
    }

    /// Freezes the server (SIGSTOP to its process group) and returns once every thread of the
    /// router and of its workers is stopped. A group stop is not atomic: the kernel wakes one
    /// thread to take the signal, and that thread stops the others; on a loaded machine the
    /// other threads can still answer a request in between, so a test that needs a server
    /// that answers nothing waits for this. Panics after 10 s.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(10);
        let pids: Vec<u32> = std::iter::once(self.pid()).chain(self.workers()).collect();
        while !pids.iter().all(|pid| all_threads_stopped(*pid)) {
            assert!(
                Instant::now() < deadline,
                "the server's threads did not stop"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The process ids of the server's worker processes (its children).
    pub fn workers(&self) -> Vec<u32> {
        children_of(self.child.id())
    }

    /// Resident memory of the router and all its workers, in KiB.
    pub fn tree_rss_kib(&self) -> u64 {
        std::iter::once(self.pid())
            .chain(self.workers())
            .map(rss_kib_of)
            .sum()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The router's resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid())
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }

    /// The lines of the log so far that contain `needle`.
    pub fn log_lines_containing(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// Whether the log holds a line containing `needle`, waiting up to 5 s for it (the log is
    /// read by another thread).
    pub fn log_contains(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Two applications on SoftHSM2 directly: two instances of the module (private copies), each
/// with its own sessions, handles and login, as two processes have; initialised.
pub fn direct_pair(hsm: &SoftHsm) -> (raw::RawModule, raw::RawModule) {
    let conf = hsm.conf.to_string_lossy().into_owned();
    let (a, b) = (
        raw::RawModule::load(&hsm.module_copy()),
        raw::RawModule::load(&hsm.module_copy()),
    );
    with_env(&[("SOFTHSM2_CONF", &conf)], || {
        assert_eq!(a.initialize(), cryptoki_sys::CKR_OK);
        assert_eq!(b.initialize(), cryptoki_sys::CKR_OK);
    });
    (a, b)
}

/// One application through the proxy at `address`: a private copy of the shim (its own
/// instance), initialised.
pub fn proxy_client(address: &str, dir: &TempDir) -> raw::RawModule {
    let m = raw::RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", address)], || m.initialize()),
        cryptoki_sys::CKR_OK
    );
    m
}

/// A process's resident memory in KiB (VmRSS), 0 if it is gone.
pub fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc/PID/task/*/stat`);
/// true for a process that is gone.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let state = stat[stat.rfind(')')? + 2..].chars().next()?;
                Some(state == 'T' || state == 'Z' || state == 'X')
            })
            .unwrap_or(true)
    })
}

/// The live children of `parent`, read from /proc (field 4 of /proc/PID/stat is the parent).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The command name (field 2) is in parentheses and may hold spaces.
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// A raw TCP connection that sent the routing prelude and a hello for `client_id` (no C
/// initialisation arguments); the route answer and the welcome are the caller's to read.
pub fn raw_hello(address: &str, client_id: [u8; 16]) -> std::net::TcpStream {
    use protocol::handshake::{routing_id, Hello, Prelude};
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(address.trim_start_matches("tcp://")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut bytes = Prelude {
        routing_id: routing_id(&client_id),
        ..Default::default()
    }
    .encode()
    .to_vec();
    let hello = Hello::new(8, client_id, None).encode();
    bytes.extend_from_slice(&(hello.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&hello);
    c.write_all(&bytes).unwrap();
    c
}

/// Length of the route answer and the framed welcome a raw client reads after its hello.
pub const ANSWERS_LEN: usize = protocol::handshake::ROUTE_ANSWER_LEN + 4 + 35;

impl Drop for ProxyServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// A cryptoki context on a private copy of the shim, initialised against `server`.
pub fn proxy_context(server: &ProxyServer, dir: &Path) -> cryptoki::context::Pkcs11 {
    let shim = private_copy(&shim_path(), dir);
    let ctx = cryptoki::context::Pkcs11::new(shim).expect("load shim");
    with_env(&[("PKCS11_PROXY_SOCKET", &server.address)], || {
        ctx.initialize(cryptoki::context::CInitializeArgs::new(
            cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
        ))
    })
    .expect("C_Initialize through the proxy");
    ctx
}

/// A cryptoki context on a private copy of SoftHSM2 itself (the direct reference).
pub fn direct_context(hsm: &SoftHsm) -> cryptoki::context::Pkcs11 {
    let ctx = cryptoki::context::Pkcs11::new(hsm.module_copy()).expect("load softhsm");
    let conf = hsm.conf.to_string_lossy().into_owned();
    with_env(&[("SOFTHSM2_CONF", &conf)], || {
        ctx.initialize(cryptoki::context::CInitializeArgs::new(
            cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
        ))
    })
    .expect("C_Initialize of SoftHSM2");
    ctx
}

/// Builds the PKCS#11 module `tests/c/NAME.c` (a wrapper of SoftHSM2) into `dir`.
pub fn build_c_module(name: &str, dir: &TempDir) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.path().join(format!("lib{name}.so"));
    let cc = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I/usr/include/p11-kit-1",
        ])
        .arg(root.join(format!("c/{name}.c")))
        .arg("-o")
        .arg(&out)
        .arg("-ldl")
        .output()
        .expect("a C compiler (cc) must be installed");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    out
}

/// Builds the Go program in `tests/go/fabric` (Fabric's BCCSP sequence with miekg/pkcs11)
/// into `dir` with Debian's golang and golang-github-miekg-pkcs11-dev (GOPATH mode, no module
/// download).
pub fn build_go_fabric(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/fabric");
    let exe = dir.join("fabric");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", dir.join("gocache"))
        .output()
        .expect("go (Debian packages golang, golang-github-miekg-pkcs11-dev) must be installed");
    assert!(
        out.status.success(),
        "go build: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// The Go program's signing loop (`FABRIC_LOOP_MS`) through the shim at `address`, on the
/// token labelled `label`, started and past its set-up (its "looping" line).
pub struct GoLoop {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl GoLoop {
    pub fn start(program: &Path, dir: &Path, label: &str, address: &str, loop_ms: u64) -> Self {
        let mut child = Command::new(program)
            .arg(private_copy(&shim_path(), dir))
            .args([label, PIN])
            .env("PKCS11_PROXY_SOCKET", address)
            .env("FABRIC_LOOP_MS", loop_ms.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            assert!(!line.starts_with("FAIL"), "{line}");
            if line == "looping" {
                break;
            }
        }
        Self { child, lines }
    }

    /// Waits for the loop's end (asserting a successful exit): what it printed after
    /// "looping", its summary line last.
    pub fn finish(mut self) -> GoSummary {
        let lines: Vec<String> = self.lines.by_ref().map(|l| l.unwrap()).collect();
        assert!(self.child.wait().unwrap().success(), "{lines:?}");
        let summary = lines.last().expect("a summary line").clone();
        assert!(summary.starts_with("loop: "), "{lines:?}");
        GoSummary { lines, summary }
    }
}

/// What [`GoLoop::finish`] read.
pub struct GoSummary {
    pub lines: Vec<String>,
    /// `loop: signatures=N errors=N evictions=N late=N last_error_ms=N slowest_ms=N`.
    pub summary: String,
}

impl GoSummary {
    /// The summary's counter `key`.
    pub fn count(&self, key: &str) -> u64 {
        self.summary
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {}", self.summary))
    }
}

/// GET `path` from the HTTP endpoint at `addr` (the metrics port): (status line, body).
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}
