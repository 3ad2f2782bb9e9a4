//! Deployment files, checked without a container engine or a cluster: the container
//! entrypoint run with the old daemon's environment, shell scripts through shellcheck,
//! Kubernetes manifests through an offline schema validator, systemd units through
//! systemd-analyze and socket activation through systemd-socket-activate.

use std::path::{Path, PathBuf};
use std::process::Command;

use cryptoki_sys::*;
use tests::raw::RawModule;
use tests::{
    private_copy, server_path, shim_path, with_env, ProxyServer, SoftHsm, TempDir, PIN, SOFTHSM,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn deploy() -> PathBuf {
    root().join("proxy-server/deploy")
}

fn serves(address: &str, dir: &TempDir) {
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    assert_eq!(
        with_env(&[("PKCS11_PROXY_SOCKET", address)], || m.initialize()),
        CKR_OK
    );
    assert_eq!(m.login(m.open_rw(m.first_slot()), PIN), CKR_OK);
}

#[test]
fn entrypoint_accepts_the_old_daemon_environment_and_answers_the_healthcheck() {
    let hsm = SoftHsm::new("entry");
    let dir = TempDir::new("entry");
    let server = server_path();
    let conf = hsm.conf.to_string_lossy().into_owned();
    let proxy = ProxyServer::start_program(
        &deploy().join("entrypoint.sh"),
        &[],
        &[
            ("LIBRARY_LOCATION", SOFTHSM),
            ("PKCS11_DAEMON_SOCKET", "tcp://127.0.0.1:0"),
            ("METRICS_LISTEN", "127.0.0.1:0"),
            ("PKCS11_PROXY_SERVER", server.to_str().unwrap()),
            ("SOFTHSM2_CONF", &conf),
        ],
    );
    serves(&proxy.address, &dir);
    let metrics = proxy.metrics_address();
    let health = Command::new(deploy().join("entrypoint.sh"))
        .arg("healthcheck")
        .env("METRICS_LISTEN", &metrics)
        .status()
        .unwrap();
    assert!(health.success());
    let missing = Command::new(deploy().join("entrypoint.sh"))
        .env_remove("LIBRARY_LOCATION")
        .env_remove("PKCS11_PROXY_CONFIG")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("LIBRARY_LOCATION"));
}

#[test]
fn shell_scripts_are_shellcheck_clean() {
    let scripts = [
        deploy().join("entrypoint.sh"),
        root().join("tests/demo.sh"),
        root().join("tests/run-tests.sh"),
        root().join("tests/install-deps.sh"),
        root().join("tests/bench.sh"),
        root().join("protocol/fuzz/run.sh"),
        root().join(".ci/run"),
        root().join(".ci/dist"),
        root().join(".ci/check-baseline"),
        deploy().join("luna/10-luna-register.sh"),
        deploy().join("luna/00-luna-env.envsh"),
    ];
    let out = Command::new("shellcheck")
        .args(["--shell", "bash"])
        .args(&scripts)
        .output()
        .expect("shellcheck (Debian package shellcheck)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn kubernetes_manifests_validate_offline() {
    let base = deploy().join("kubernetes/base");
    let manifests: Vec<PathBuf> = ["namespace", "configmap", "secret", "deployment", "service"]
        .iter()
        .map(|m| base.join(format!("{m}.yaml")))
        .collect();
    let text = validate_k8s(&manifests);
    assert_eq!(text.matches("passed").count(), manifests.len(), "{text}");
    // Every resource the overlay names exists in the base.
    let overlay =
        std::fs::read_to_string(deploy().join("kubernetes/overlays/failover/kustomization.yaml"))
            .unwrap();
    for line in overlay
        .lines()
        .filter(|l| l.trim_start().starts_with("- ../../base/"))
    {
        let file = line.trim_start().trim_start_matches("- ../../base/");
        assert!(base.join(file).exists(), "{file}");
    }
}

/// The server configuration `toml` (from a manifest: its vendor library and TLS paths replaced
/// by this machine's SoftHSM2 and throwaway TLS files) passes `--check-config`.
fn server_accepts(dir: &TempDir, tag: &str, toml: &str) {
    let pki = tests::pki::Pki::new(dir.path(), tag);
    let id = pki.server(&format!("{tag}-server"));
    let toml = toml
        .replace("/opt/hsm/lib/libCryptoki2_64.so", SOFTHSM)
        .replace("/etc/pkcs11-proxy/tls/tls.crt", id.cert.to_str().unwrap())
        .replace("/etc/pkcs11-proxy/tls/tls.key", id.key.to_str().unwrap())
        .replace(
            "/etc/pkcs11-proxy/tls/clients-ca.crt",
            pki.ca.to_str().unwrap(),
        );
    let file = dir.path().join("server.toml");
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(server_path())
        .args(["--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_configmap_server_configuration_is_valid() {
    let dir = TempDir::new("cm");
    let yaml = std::fs::read_to_string(deploy().join("kubernetes/base/configmap.yaml")).unwrap();
    let toml: String = yaml
        .split("server.toml: |")
        .nth(1)
        .unwrap()
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    server_accepts(&dir, "cm", &toml);
}

#[test]
fn systemd_units_verify_and_socket_activation_serves() {
    let dir = TempDir::new("systemd");
    let server = server_path();
    let units = deploy().join("systemd");
    // systemd-analyze checks the binary exists and the users resolve: point them at this build.
    for unit in ["pkcs11-proxy.service", "pkcs11-proxy.socket"] {
        let text = std::fs::read_to_string(units.join(unit))
            .unwrap()
            .replace(
                "/usr/local/bin/pkcs11-proxy-server",
                server.to_str().unwrap(),
            )
            .replace("pkcs11proxy", "root");
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("pkcs11-proxy.socket"))
        .arg(dir.path().join("pkcs11-proxy.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let hsm = SoftHsm::new("activated");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let conf = hsm.conf.to_string_lossy().into_owned();
    // systemd-socket-activate starts the server at the first connection: make one.
    let knock = listen.clone();
    std::thread::spawn(move || {
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if std::net::TcpStream::connect(&knock).is_ok() {
                return;
            }
        }
    });
    let proxy = ProxyServer::start_program(
        Path::new("systemd-socket-activate"),
        &[
            "-l",
            &listen,
            "-E",
            "SOFTHSM2_CONF",
            server.to_str().unwrap(),
            "--module",
            SOFTHSM,
        ],
        &[("SOFTHSM2_CONF", &conf)],
    );
    assert_eq!(proxy.address, format!("tcp://{listen}"));
    serves(&proxy.address, &dir);
}

#[test]
fn entrypoint_serves_tls_from_the_environment() {
    let hsm = SoftHsm::new("entrytls");
    let dir = TempDir::new("entrytls");
    let pki = tests::pki::Pki::new(dir.path(), "entry");
    let (server_id, client_id) = (
        pki.server("entry-server"),
        pki.client("entry-client", false),
    );
    let server = server_path();
    let conf = hsm.conf.to_string_lossy().into_owned();
    let proxy = ProxyServer::start_program(
        &deploy().join("entrypoint.sh"),
        &[],
        &[
            ("LIBRARY_LOCATION", SOFTHSM),
            ("PKCS11_DAEMON_SOCKET", "tls://127.0.0.1:0"),
            ("PKCS11_PROXY_TLS_CERT", server_id.cert.to_str().unwrap()),
            ("PKCS11_PROXY_TLS_KEY", server_id.key.to_str().unwrap()),
            ("PKCS11_PROXY_TLS_CLIENT_CA", pki.ca.to_str().unwrap()),
            ("PKCS11_PROXY_SERVER", server.to_str().unwrap()),
            ("SOFTHSM2_CONF", &conf),
        ],
    );
    assert!(proxy.address.starts_with("tls://"));
    let m = RawModule::load(&private_copy(&shim_path(), dir.path()));
    let (ca, cert, key) = (
        pki.ca.to_str().unwrap(),
        client_id.cert.to_str().unwrap(),
        client_id.key.to_str().unwrap(),
    );
    let env = [
        ("PKCS11_PROXY_SOCKET", proxy.address.as_str()),
        ("PKCS11_PROXY_TLS_CA", ca),
        ("PKCS11_PROXY_TLS_CERT", cert),
        ("PKCS11_PROXY_TLS_KEY", key),
    ];
    assert_eq!(with_env(&env, || m.initialize()), CKR_OK);
    assert_eq!(m.login(m.open_rw(m.first_slot()), PIN), CKR_OK);
}

/// Validates the Kubernetes objects in `files` offline (kubernetes-validate, strict, 1.29):
/// each must pass.
fn validate_k8s(files: &[PathBuf]) -> String {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.29.0"])
        .args(files)
        .output()
        .expect("kubernetes-validate (PyPI package kubernetes-validate)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("failed"), "{text}");
    text
}

/// Renders overlay `name` as kustomize would for what it uses (the base's resources with the
/// overlay's JSON patches, add and replace, applied; the overlay's own resources), without
/// kubectl, into files in `dir`; validates them offline and returns the rendered text.
fn render_overlay(dir: &TempDir, name: &str) -> String {
    let overlay = deploy().join("kubernetes/overlays").join(name);
    let out_file = dir.path().join(format!("{name}.yaml"));
    let script = r#"
import os, sys, yaml
base_dir, overlay_dir, out = sys.argv[1:4]
k = yaml.safe_load(open(os.path.join(overlay_dir, "kustomization.yaml")))
docs = []
for r in k["resources"]:
    path = os.path.normpath(os.path.join(overlay_dir, r))
    if os.path.isdir(path):
        assert path == os.path.normpath(base_dir), path
        base = yaml.safe_load(open(os.path.join(path, "kustomization.yaml")))
        docs += [yaml.safe_load(open(os.path.join(path, f))) for f in base["resources"]]
    else:
        docs.append(yaml.safe_load(open(path)))
for p in k.get("patches", []):
    targets = [d for d in docs if d["kind"] == p["target"]["kind"] and d["metadata"]["name"] == p["target"]["name"]]
    assert len(targets) == 1, p["target"]
    for op in yaml.safe_load(p["patch"]):
        assert op["op"] in ("add", "replace"), op
        *parents, last = op["path"].strip("/").split("/")
        node = targets[0]
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            if last == "-":
                node.append(op["value"])
            else:
                assert op["op"] == "replace" and int(last) < len(node), op["path"]
                node[int(last)] = op["value"]
        else:
            assert op["op"] == "add" or last in node, op["path"]
            node[last] = op["value"]
yaml.safe_dump_all(docs, open(out, "w"))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(deploy().join("kubernetes/base"))
        .arg(&overlay)
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    validate_k8s(std::slice::from_ref(&out_file));
    std::fs::read_to_string(&out_file).unwrap()
}

#[test]
fn the_ha_overlay_renders_to_two_spread_replicas_with_a_disruption_budget() {
    let dir = TempDir::new("ha");
    let text = render_overlay(&dir, "ha");
    assert_contains_all(
        &text,
        &[
            "replicas: 2",
            "podAntiAffinity",
            "kind: PodDisruptionBudget",
            "sessionAffinity: ClientIP",
            "maxSurge: 1",
        ],
    );
}

#[test]
fn the_luna_overlay_renders_the_guides_environment_and_writable_volumes() {
    let dir = TempDir::new("lunaoverlay");
    let text = render_overlay(&dir, "luna");
    assert_contains_all(
        &text,
        &[
            "image: pkcs11-proxy-luna:latest",
            "name: LICENSE",
            "name: HSM_ADDRESS",
            "name: CLIENT_ADDRESS",
            "name: gemalto-config",
            "mountPath: /configs",
            "mountPath: /var/lib/luna",
            "mountPath: /usr/safenet/lunaclient/cert",
            "readOnlyRootFilesystem: true",
            "runAsNonRoot: true",
            "memory: 400Mi",
            "/usr/safenet/lunaclient/libs/64/libCryptoki2.so",
        ],
    );
    // The host's vendor client volume is replaced by the image's client.
    assert!(!text.contains("hostPath"), "{text}");
}

/// The helm binary: the one `tests/install-deps.sh` installs, or one on PATH.
fn helm() -> PathBuf {
    let ours = root().join("target/tools/helm/bin/helm");
    if ours.exists() {
        return ours;
    }
    PathBuf::from("helm")
}

/// `helm template` of the chart with `sets`, written to a file in `dir`; the error text if
/// helm refused the values.
fn helm_template(dir: &TempDir, name: &str, sets: &[&str]) -> Result<PathBuf, String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "p11", "--namespace", "hsm-proxy"])
        .arg(deploy().join("helm/pkcs11-proxy"));
    for s in sets {
        match s.strip_prefix("-f ") {
            Some(file) => cmd
                .arg("-f")
                .arg(deploy().join("helm/pkcs11-proxy").join(file)),
            None => cmd.args(["--set", s]),
        };
    }
    let out = cmd
        .output()
        .expect("helm (tests/install-deps.sh installs it)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let file = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, &out.stdout).unwrap();
    Ok(file)
}

#[test]
fn the_helm_chart_lints_renders_and_validates_offline() {
    let dir = TempDir::new("helm");
    let lint = Command::new(helm())
        .args(["lint", "--strict"])
        .arg(deploy().join("helm/pkcs11-proxy"))
        .output()
        .expect("helm (tests/install-deps.sh installs it)");
    assert!(
        lint.status.success(),
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let defaults = helm_template(&dir, "defaults", &[]).unwrap();
    let ha = helm_template(&dir, "ha", &["replicas=2", "antiAffinity=hard"]).unwrap();
    let plain = helm_template(
        &dir,
        "plain",
        &[
            "tls.enabled=false",
            "metrics.enabled=false",
            "service.sessionAffinity=None",
        ],
    )
    .unwrap();
    let luna = helm_template(&dir, "luna", &["-f values-luna.yaml"]).unwrap();
    for (file, objects) in [(&defaults, 3), (&ha, 4), (&plain, 3), (&luna, 3)] {
        let text = validate_k8s(std::slice::from_ref(file));
        assert_eq!(text.matches("passed").count(), objects, "{text}");
    }
    let ha = std::fs::read_to_string(&ha).unwrap();
    assert_contains_all(
        &ha,
        &[
            "kind: PodDisruptionBudget",
            "replicas: 2",
            "requiredDuringSchedulingIgnoredDuringExecution",
            "sessionAffinity: ClientIP",
            "maxSurge: 1",
        ],
    );
    let luna = std::fs::read_to_string(&luna).unwrap();
    assert_contains_all(
        &luna,
        &[
            "pkcs11-proxy-luna:latest",
            "name: gemalto-config",
            "mountPath: /usr/safenet/lunaclient/cert",
            "name: LICENSE",
            "memory: 400Mi",
        ],
    );
    assert!(!luna.contains("hostPath"), "{luna}");
    let plain = std::fs::read_to_string(&plain).unwrap();
    assert!(
        plain.contains(r#"listen = ["tcp://0.0.0.0:2345"]"#),
        "{plain}"
    );
    assert!(!plain.contains("metrics_listen") && !plain.contains("PodDisruptionBudget"));
    // The schema refuses what would render a broken Deployment.
    for bad in [
        "replicas=0",
        "bogus=1",
        "module=relative.so",
        "antiAffinity=maybe",
    ] {
        let e = helm_template(&dir, "bad", &[bad]).expect_err(bad);
        assert!(
            e.contains("values don't meet the specifications"),
            "{bad}: {e}"
        );
    }
    // The server configuration the chart renders is one the server accepts.
    let defaults = std::fs::read_to_string(&defaults).unwrap();
    let toml: String = defaults
        .split("server.toml: |")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(toml.contains("deny_function = [\"C_InitToken\"]"), "{toml}");
    server_accepts(&dir, "helm", &toml);
}

/// Asserts that `text` holds every one of `needles`.
fn assert_contains_all(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle} in {text}");
    }
}

/// The entrypoint's environment for a server on SoftHSM `hsm` on a free loopback port.
fn entrypoint_env(hsm: &SoftHsm) -> Vec<(String, String)> {
    vec![
        ("LIBRARY_LOCATION".into(), SOFTHSM.into()),
        ("PKCS11_DAEMON_SOCKET".into(), "tcp://127.0.0.1:0".into()),
        (
            "PKCS11_PROXY_SERVER".into(),
            server_path().to_string_lossy().into_owned(),
        ),
        (
            "SOFTHSM2_CONF".into(),
            hsm.conf.to_string_lossy().into_owned(),
        ),
    ]
}

fn write_hook(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn entrypoint_hooks_run_in_order_before_the_server_and_a_failing_one_stops_it() {
    let hsm = SoftHsm::new("hooks");
    let dir = TempDir::new("hooks");
    let hooks = dir.path().join("docker-entrypoint.d");
    std::fs::create_dir(&hooks).unwrap();
    let trace = dir.path().join("trace");
    let t = trace.display();
    write_hook(&hooks, "20-second", &format!("echo second >> {t}"));
    write_hook(
        &hooks,
        "10-first",
        &format!("echo \"first $FROM_ENVSH\" >> {t}"),
    );
    std::fs::write(hooks.join("05-env.envsh"), "export FROM_ENVSH=exported\n").unwrap();
    std::fs::write(hooks.join("README"), "not a hook\n").unwrap();
    let mut env = entrypoint_env(&hsm);
    env.push((
        "PKCS11_PROXY_HOOKS_DIR".into(),
        hooks.to_string_lossy().into_owned(),
    ));
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let proxy = ProxyServer::start_program(&deploy().join("entrypoint.sh"), &[], &env_ref);
    assert_eq!(
        std::fs::read_to_string(&trace).unwrap(),
        "first exported\nsecond\n"
    );
    assert!(proxy.log_contains("ignoring") && proxy.log_contains("README"));
    serves(&proxy.address, &dir);
    drop(proxy);

    // A failing hook: the container stops with its name, the later hooks and the server never
    // start.
    std::fs::remove_file(&trace).unwrap();
    write_hook(&hooks, "15-fails", "exit 7");
    let out = Command::new(deploy().join("entrypoint.sh"))
        .envs(env_ref.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("15-fails failed (exit status 7)"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&trace).unwrap(), "first exported\n");
}

#[test]
fn the_old_daemon_command_line_starts_the_server() {
    let hsm = SoftHsm::new("daemonline");
    let dir = TempDir::new("daemonline");
    let mut env = entrypoint_env(&hsm);
    env.retain(|(k, _)| k != "LIBRARY_LOCATION");
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let proxy = ProxyServer::start_program(
        &deploy().join("entrypoint.sh"),
        &["pkcs11-daemon", SOFTHSM, "-"],
        &env_ref,
    );
    serves(&proxy.address, &dir);
}

#[test]
fn the_luna_hook_runs_the_guides_vtl_steps_with_its_variables_and_files() {
    // The real vtl is Thales's and cannot be installed here: a stand-in on its path records
    // each command line and the configuration path it was given, so that the hook's commands,
    // their order and the files it copies can be compared with the guide's entrypoint.
    let hsm = SoftHsm::new("luna");
    let dir = TempDir::new("luna");
    let luna = dir.path().join("lunaclient");
    let configs = dir.path().join("configs");
    let conf = dir.path().join("luna-conf");
    std::fs::create_dir_all(&luna).unwrap();
    std::fs::create_dir_all(&configs).unwrap();
    std::fs::write(luna.join("Chrystoki.conf"), "Chrystoki2 = {}\n").unwrap();
    for (f, text) in [
        ("server.pem", "HSM SERVER CERT"),
        ("cert.pem", "CLIENT CERT"),
        ("key.pem", "CLIENT KEY"),
    ] {
        std::fs::write(configs.join(f), text).unwrap();
    }
    let calls = dir.path().join("vtl.calls");
    write_hook(
        dir.path(),
        "vtl",
        &format!(
            "echo \"$* [conf $ChrystokiConfigurationPath]\" >> {}",
            calls.display()
        ),
    );
    let mut env = entrypoint_env(&hsm);
    for (k, v) in [
        ("PKCS11_PROXY_HOOKS_DIR", deploy().join("luna")),
        ("LUNA_CLIENT_DIR", luna.clone()),
        ("LUNA_CONFIGS", configs.clone()),
        ("LUNA_VTL", dir.path().join("vtl")),
        ("ChrystokiConfigurationPath", conf.clone()),
    ] {
        env.push((k.into(), v.to_string_lossy().into_owned()));
    }
    env.push(("HSM_ADDRESS".into(), "10.0.0.5".into()));
    env.push(("CLIENT_ADDRESS".into(), "peer0".into()));
    let mut without_licence: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Without LICENSE=accept (the guide's), nothing is registered and the server never starts.
    let out = Command::new(deploy().join("entrypoint.sh"))
        .envs(without_licence.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("LICENSE=accept"), "{stderr}");
    assert!(!calls.exists());
    without_licence.push(("LICENSE", "accept"));
    let proxy = ProxyServer::start_program(&deploy().join("entrypoint.sh"), &[], &without_licence);
    let c = conf.display();
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        format!(
            "addServer -n 10.0.0.5 -c {}/server.pem [conf {c}]\ncreatecert -n peer0 [conf {c}]\nverify [conf {c}]\n",
            configs.display()
        )
    );
    let client = luna.join("cert/client");
    assert_eq!(
        std::fs::read_to_string(client.join("peer0.pem")).unwrap(),
        "CLIENT CERT"
    );
    assert_eq!(
        std::fs::read_to_string(client.join("peer0Key.pem")).unwrap(),
        "CLIENT KEY"
    );
    assert!(conf.join("Chrystoki.conf").exists());
    assert!(proxy.log_contains("ignoring") && proxy.log_contains("Dockerfile"));
    serves(&proxy.address, &dir);
}
