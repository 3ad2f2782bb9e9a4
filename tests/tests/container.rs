//! The image, built and run for real (podman, runc), as an operator does on a first day:
//! a local Debian base image made with debootstrap (no image registry is reachable here; it
//! is cached under `target/container/`), the project's Dockerfile built with the prebuilt
//! release binaries in place of its build stage, and the container run read-only, as uid
//! 10001, without capabilities: SoftHSM2 (mounted) serves the shim on the host; `/healthz`,
//! `/readyz` and the image's HEALTHCHECK answer; SIGUSR1 reaches the server as PID 1 (the call
//! trace); SIGTERM stops it with exit status 0 within its grace. The Luna image is built FROM
//! it with a stand-in client tarball and runs its start-up hooks. Podman's storage lives in a
//! directory of its own under `target/`, removed at the end with every container.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use tests::fabric::{attr, make_token_key, KEY_ID};
use tests::{build_dir, http_get, proxy_client, SoftHsm, TempDir, PIN, SOFTHSM};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The containers' world: podman with its storage, run state and configuration under
/// `target/container/`, so that nothing is left on the machine.
struct Podman {
    dir: PathBuf,
    names: Vec<String>,
}

impl Podman {
    fn new() -> Self {
        let dir = root().join(format!("target/container/podman-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Debian's crun refuses these machines' cgroup layout, and root here may not raise
        // its limits (no CAP_SYS_RESOURCE): runc, and limits within the current ones.
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\n\
             default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [engine]\n\
             runtime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n",
        )
        .unwrap();
        Self {
            dir,
            names: Vec::new(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .output()
            .expect("podman (tests/install-deps.sh installs it)")
    }

    /// `podman ARGS`, asserting success: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a container (removed at the end) and returns its name.
    fn start(&mut self, name: &str, args: &[&str]) -> String {
        let name = format!("p11-{name}-{}", std::process::id());
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        self.ok(&all);
        self.names.push(name.clone());
        name
    }

    fn logs(&self, name: &str) -> String {
        let out = self.run(&["logs", name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Waits until the container's log holds `needle` (30 s at most): the log.
    fn wait_log(&self, name: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.logs(name);
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in: {log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.run(&["rm", "-f", "-t", "0", name]);
        }
        let _ = self.run(&["rmi", "-a", "-f"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A root file system of Debian 12 (`debootstrap --variant=minbase`, as the official
/// `debian:bookworm-slim` is made, plus libssl3 for the mounted SoftHSM2), as a tar archive:
/// made once and cached under `target/container/`.
fn base_image_tar() -> PathBuf {
    let tar = root().join("target/container/debian-bookworm-minbase.tar");
    if tar.exists() {
        return tar;
    }
    let rootfs = root().join(format!("target/container/rootfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&rootfs);
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "--include=libssl3", "bookworm"])
        .arg(&rootfs)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("debootstrap (tests/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "debootstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the slim images leave out: documentation, manuals, translations, package lists.
    for d in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "var/lib/apt/lists",
        "var/cache/apt",
    ] {
        let _ = std::fs::remove_dir_all(rootfs.join(d));
    }
    let partial = tar.with_extension("partial");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&partial)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::rename(&partial, &tar).unwrap();
    let _ = std::fs::remove_dir_all(&rootfs);
    tar
}

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fabric's signing path through the shim at `address`: the key found by CKA_ID, a P-256
/// signature, and its verification by the token.
fn sign_and_verify(address: &str, dir: &TempDir) {
    let m = proxy_client(address, dir);
    make_token_key(&m);
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, PIN), CKR_USER_ALREADY_LOGGED_IN);
    let find = |class: CK_OBJECT_CLASS| -> CK_OBJECT_HANDLE {
        let class = class.to_ne_bytes();
        let mut template = [attr(CKA_CLASS, &class), attr(CKA_ID, KEY_ID)];
        let (mut h, mut n) = (0, 0);
        // SAFETY: valid session, template and out pointers.
        unsafe {
            let f = m.f();
            assert_eq!(
                f.C_FindObjectsInit.unwrap()(s, template.as_mut_ptr(), 2),
                CKR_OK
            );
            assert_eq!(f.C_FindObjects.unwrap()(s, &mut h, 1, &mut n), CKR_OK);
            assert_eq!(f.C_FindObjectsFinal.unwrap()(s), CKR_OK);
        }
        assert_eq!(n, 1);
        h
    };
    let (private, public) = (find(CKO_PRIVATE_KEY), find(CKO_PUBLIC_KEY));
    let mut mech = CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut digest = [0x42u8; 32];
    let mut sig = [0u8; 64];
    let mut len = sig.len() as CK_ULONG;
    // SAFETY: valid session, mechanism, keys and buffers.
    unsafe {
        let f = m.f();
        assert_eq!(f.C_SignInit.unwrap()(s, &mut mech, private), CKR_OK);
        assert_eq!(
            f.C_Sign.unwrap()(s, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut len),
            CKR_OK
        );
        assert_eq!(f.C_VerifyInit.unwrap()(s, &mut mech, public), CKR_OK);
        assert_eq!(
            f.C_Verify.unwrap()(s, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), len),
            CKR_OK
        );
        f.C_Finalize.unwrap()(std::ptr::null_mut());
    }
}

/// SoftHSM2's token directory and configuration as the container sees them (`/hsm`), owned by
/// the image's user.
fn token_for_container(hsm: &SoftHsm) -> PathBuf {
    let host = hsm.dir.path();
    std::fs::write(
        host.join("container.conf"),
        "directories.tokendir = /hsm/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
    )
    .unwrap();
    let status = Command::new("chown")
        .args(["-R", "10001"])
        .arg(host)
        .status()
        .unwrap();
    assert!(status.success());
    host.to_path_buf()
}

#[test]
fn the_image_builds_and_runs_read_only_unprivileged_serving_the_shim_and_stopping_cleanly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: rootful podman needs root (CI runs as root)");
        return;
    }
    let started = Instant::now();
    let mut podman = Podman::new();
    // The base image, under the name the Dockerfile's FROM uses.
    let tar = base_image_tar();
    let made_base = started.elapsed();
    let import = podman
        .cmd()
        .args(["import", "-", "localhost/debian:bookworm-slim"])
        .stdin(std::fs::File::open(&tar).unwrap())
        .output()
        .unwrap();
    assert!(import.status.success(), "{import:?}");
    podman.ok(&[
        "tag",
        "localhost/debian:bookworm-slim",
        "docker.io/library/debian:bookworm-slim",
    ]);

    // The build stage's outputs, from this build's release binaries.
    let ctx = TempDir::new("image-build");
    let release = build_dir();
    for (from, to) in [
        (
            release.join("pkcs11-proxy-server"),
            "dist/gnu/pkcs11-proxy-server",
        ),
        (
            release.join("libpkcs11_shim.so"),
            "dist/gnu/libpkcs11_shim.so",
        ),
        (
            release.join("libpkcs11_shim.so"),
            "dist/musl/libpkcs11_shim.so",
        ),
        (
            root().join("include/pkcs11_proxy.h"),
            "src/include/pkcs11_proxy.h",
        ),
    ] {
        let to = ctx.path().join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
    let dockerfile = root().join("proxy-server/deploy/Dockerfile");
    let build_context = format!("build={}", ctx.path().display());
    let project = root();
    podman.ok(&[
        "build",
        "--pull=never",
        "--format",
        "docker",
        "--build-context",
        &build_context,
        "-f",
        dockerfile.to_str().unwrap(),
        "-t",
        "localhost/pkcs11-proxy:test",
        project.to_str().unwrap(),
    ]);
    let built = started.elapsed();
    let config = podman.ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.Healthcheck}}",
        "localhost/pkcs11-proxy:test",
    ]);
    assert!(config.starts_with("10001 "), "{config}");
    assert!(config.contains("healthcheck"), "HEALTHCHECK kept: {config}");

    // Run as the operator's guide says, SoftHSM2 mounted in place of the vendor's library.
    let hsm = SoftHsm::new("image");
    let hsm_dir = token_for_container(&hsm);
    let (port, metrics) = (free_port(), free_port());
    let volume = format!("{}:/hsm", hsm_dir.display());
    let library = format!("{SOFTHSM}:/opt/hsm/libsofthsm2.so:ro");
    let listen = format!("PKCS11_DAEMON_SOCKET=tcp://127.0.0.1:{port}");
    let metrics_env = format!("METRICS_LISTEN=127.0.0.1:{metrics}");
    let name = podman.start(
        "server",
        &[
            "--read-only",
            "--user",
            "10001",
            "--cap-drop=ALL",
            "--security-opt",
            "no-new-privileges",
            "--network",
            "host",
            "-v",
            &volume,
            "-v",
            &library,
            "-e",
            "SOFTHSM2_CONF=/hsm/container.conf",
            "-e",
            "LIBRARY_LOCATION=/opt/hsm/libsofthsm2.so",
            "-e",
            &listen,
            "-e",
            &metrics_env,
            "localhost/pkcs11-proxy:test",
        ],
    );
    podman.wait_log(&name, "listening on");
    let address = format!("tcp://127.0.0.1:{port}");
    let dir = TempDir::new("image-client");
    sign_and_verify(&address, &dir);
    let m = format!("127.0.0.1:{metrics}");
    assert_eq!(http_get(&m, "/healthz").0, "HTTP/1.1 200 OK");
    assert_eq!(http_get(&m, "/readyz").0, "HTTP/1.1 200 OK");
    assert!(podman.run(&["healthcheck", "run", &name]).status.success());
    // The call trace reaches the server as the container's first process.
    podman.ok(&["kill", "--signal", "USR1", &name]);
    podman.wait_log(&name, "call trace on for every application");
    // SIGTERM: the server stops in order, exit status 0, well within the 10 s grace.
    let stopping = Instant::now();
    podman.ok(&["stop", "-t", "10", &name]);
    let stop_took = stopping.elapsed();
    let exit = podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(exit.trim(), "0", "{}", podman.logs(&name));
    assert!(stop_took < Duration::from_secs(8), "{stop_took:?}");
    assert!(podman.logs(&name).contains("stopped"));

    luna_image_runs_its_hooks(&mut podman, &hsm_dir, &dir);
    eprintln!(
        "container test: base image {} ms ({}), images built by {} ms, stop {} ms, all {} ms",
        made_base.as_millis(),
        if made_base > Duration::from_secs(5) {
            "debootstrap"
        } else {
            "cached"
        },
        built.as_millis(),
        stop_took.as_millis(),
        started.elapsed().as_millis()
    );
}

/// The Luna image FROM the image just built, with a stand-in Luna Minimal Client: SoftHSM2 as
/// its `libCryptoki2.so` and a `vtl` that says what it was asked. Its hooks register the HSM
/// the guide's way, then the server serves the shim.
fn luna_image_runs_its_hooks(podman: &mut Podman, hsm_dir: &Path, dir: &TempDir) {
    let ctx = TempDir::new("luna-build");
    let client = ctx.path().join("LunaClient-Minimal-test");
    std::fs::create_dir_all(client.join("libs/64")).unwrap();
    std::fs::create_dir_all(client.join("bin/64")).unwrap();
    std::fs::copy(SOFTHSM, client.join("libs/64/libCryptoki2.so")).unwrap();
    std::fs::write(client.join("Chrystoki-template.conf"), "Chrystoki2 = {}\n").unwrap();
    let vtl = client.join("bin/64/vtl");
    std::fs::write(
        &vtl,
        "#!/bin/sh\necho \"stand-in vtl: $* [conf $ChrystokiConfigurationPath]\" >&2\n",
    )
    .unwrap();
    let status = Command::new("chmod").arg("755").arg(&vtl).status().unwrap();
    assert!(status.success());
    let status = Command::new("tar")
        .arg("-cf")
        .arg(ctx.path().join("luna.tar"))
        .arg("-C")
        .arg(ctx.path())
        .arg("LunaClient-Minimal-test")
        .status()
        .unwrap();
    assert!(status.success());
    // The build context: the project's hooks and the tarball side by side.
    let luna_dir = ctx.path().join("proxy-server/deploy/luna");
    std::fs::create_dir_all(&luna_dir).unwrap();
    for f in ["00-luna-env.envsh", "10-luna-register.sh"] {
        std::fs::copy(
            root().join("proxy-server/deploy/luna").join(f),
            luna_dir.join(f),
        )
        .unwrap();
    }
    let dockerfile = root().join("proxy-server/deploy/luna/Dockerfile");
    podman.ok(&[
        "build",
        "--pull=never",
        "--format",
        "docker",
        "--build-arg",
        "BASE=localhost/pkcs11-proxy:test",
        "--build-arg",
        "LUNA_CLIENT_TARBALL=luna.tar",
        "-f",
        dockerfile.to_str().unwrap(),
        "-t",
        "localhost/pkcs11-proxy-luna:test",
        ctx.path().to_str().unwrap(),
    ]);
    let configs = ctx.path().join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    for f in ["server.pem", "cert.pem", "key.pem"] {
        std::fs::write(configs.join(f), format!("stand-in {f}")).unwrap();
    }
    let status = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&configs)
        .status()
        .unwrap();
    assert!(status.success());
    let port = free_port();
    let volume = format!("{}:/hsm", hsm_dir.display());
    let configs_volume = format!("{}:/configs:ro", configs.display());
    let listen = format!("PKCS11_DAEMON_SOCKET=tcp://127.0.0.1:{port}");
    let name = podman.start(
        "luna",
        &[
            "--read-only",
            "--cap-drop=ALL",
            "--security-opt",
            "no-new-privileges",
            "--network",
            "host",
            "-v",
            &volume,
            "-v",
            &configs_volume,
            "-e",
            "SOFTHSM2_CONF=/hsm/container.conf",
            "-e",
            &listen,
            "-e",
            "METRICS_LISTEN=",
            "-e",
            "HSM_ADDRESS=10.0.0.5",
            "-e",
            "CLIENT_ADDRESS=peer0",
            "-e",
            "LICENSE=accept",
            "localhost/pkcs11-proxy-luna:test",
        ],
    );
    let log = podman.wait_log(&name, "listening on");
    for line in [
        "sourcing /docker-entrypoint.d/00-luna-env.envsh",
        "running /docker-entrypoint.d/10-luna-register.sh",
        "stand-in vtl: addServer -n 10.0.0.5 -c /configs/server.pem [conf /var/lib/luna]",
        "stand-in vtl: createcert -n peer0 [conf /var/lib/luna]",
        "stand-in vtl: verify [conf /var/lib/luna]",
        "10-luna-register: HSM 10.0.0.5 registered for client peer0",
    ] {
        assert!(log.contains(line), "no {line:?} in: {log}");
    }
    // The client certificate the hook copied, in the image's volume.
    let cert = podman.ok(&[
        "exec",
        &name,
        "cat",
        "/usr/safenet/lunaclient/cert/client/peer0.pem",
    ]);
    assert_eq!(cert, "stand-in cert.pem");
    let m = proxy_client(&format!("tcp://127.0.0.1:{port}"), dir);
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, PIN), CKR_OK);
    podman.ok(&["stop", "-t", "10", &name]);
    let exit = podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(exit.trim(), "0", "{}", podman.logs(&name));
}
