//! The dashboard and the alerting rules in `proxy-server/deploy/monitoring`, checked offline
//! with Prometheus' own `promtool` (from Debian's prometheus package, unpacked by
//! `tests/install-deps.sh`) and against what the real server exports on `/metrics`: every
//! metric a query names exists, and every metric the server exports is on the dashboard.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use cryptoki_sys::*;
use tests::{http_get, proxy_client, ProxyServer, SoftHsm, TempDir, PIN};

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../proxy-server/deploy/monitoring")
        .canonicalize()
        .unwrap()
}

fn promtool() -> PathBuf {
    let ours =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/prometheus/usr/bin/promtool");
    if ours.exists() {
        return ours;
    }
    PathBuf::from("promtool")
}

/// Runs `promtool ARGS` in the monitoring directory: its output, asserting success.
fn promtool_ok(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(monitoring())
        .output()
        .expect("promtool (tests/install-deps.sh unpacks it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

/// Python with PyYAML (installed with kubernetes-validate) runs `script`; its stdout.
fn python(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .current_dir(monitoring())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The metric names (`pkcs11_proxy_...`) in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("pkcs11_proxy_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The series names of a real server's `/metrics`, after calls, with a session open: a
/// server with a policy (this process's uid on a Unix socket is its identity) and an audit
/// log, so that every family has a series.
fn exported() -> BTreeSet<String> {
    let hsm = SoftHsm::new("monitoring");
    let dir = TempDir::new("monitoring");
    let policy = dir.path().join("policy.toml");
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    std::fs::write(
        &policy,
        format!("[[identity]]\nname = \"me\"\nuid = {uid}\nrole = \"enroller\"\n"),
    )
    .unwrap();
    let listen = format!("unix://{}", dir.path().join("p.sock").display());
    let audit = dir.path().join("audit.jsonl");
    let server = ProxyServer::start_with(
        &hsm,
        &[
            "--module",
            tests::SOFTHSM,
            "--listen",
            &listen,
            "--metrics-listen",
            "127.0.0.1:0",
            "--policy",
            policy.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
        ],
        &[],
    );
    let m = proxy_client(&server.address, &dir);
    tests::fabric::make_token_key(&m);
    let s = m.open_rw(m.first_slot());
    assert_eq!(m.login(s, PIN), CKR_USER_ALREADY_LOGGED_IN);
    // SAFETY: a logged-in session.
    assert_eq!(unsafe { tests::fabric::fabric_sign(&m, s) }, CKR_OK);
    // A refusal: SO login needs the admin role.
    // SAFETY: a session of `m`, the PIN's bytes.
    let rv = unsafe { m.f().C_Login.unwrap()(s, CKU_SO, PIN.as_ptr() as *mut u8, 4) };
    assert_eq!(rv, CKR_USER_TYPE_INVALID);
    let text = http_get(&server.metrics_address(), "/metrics").1;
    assert!(
        text.contains(&format!(
            "pkcs11_proxy_identity_signatures_total{{identity=\"me\",key=\"{}\"}} 1",
            tests::fabric::KEY_ID
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )),
        "{text}"
    );
    assert!(
        text.contains("pkcs11_proxy_identity_refusals_total{identity=\"me\"} 1"),
        "{text}"
    );
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| n.starts_with("pkcs11_proxy_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let checked = promtool_ok(&["check", "rules", "pkcs11-proxy.rules.yml"]);
    assert!(checked.contains("SUCCESS: 10 rules found"), "{checked}");
    let tested = promtool_ok(&["test", "rules", "pkcs11-proxy.rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // The PrometheusRule carries the same groups, and promtool accepts them as well.
    let dir = TempDir::new("promrule");
    let spec = dir.path().join("spec.yml");
    let same = python(&format!(
        "import yaml\n\
         rule = yaml.safe_load(open('prometheus-rule.yaml'))\n\
         assert rule['kind'] == 'PrometheusRule' and rule['apiVersion'] == 'monitoring.coreos.com/v1'\n\
         plain = yaml.safe_load(open('pkcs11-proxy.rules.yml'))\n\
         yaml.safe_dump(rule['spec'], open('{}', 'w'))\n\
         print(rule['spec'] == plain)",
        spec.display()
    ));
    assert_eq!(
        same.trim(),
        "True",
        "prometheus-rule.yaml differs from the rules file"
    );
    promtool_ok(&["check", "rules", spec.to_str().unwrap()]);
}

#[test]
fn every_dashboard_and_alert_query_names_a_metric_the_server_exports_and_the_dashboard_shows_them_all(
) {
    // Valid JSON, panels with unique ids, each query against the dashboard's data source.
    let exprs = python(
        "import json\n\
         d = json.load(open('grafana-dashboard.json'))\n\
         ids = [p['id'] for p in d['panels']]\n\
         assert len(ids) == len(set(ids)), ids\n\
         for p in d['panels']:\n\
         \x20   for t in p.get('targets', []):\n\
         \x20       assert t['datasource']['uid'] == '${datasource}', p['title']\n\
         \x20       print(t['expr'])\n\
         for v in d['templating']['list']:\n\
         \x20   if v['type'] == 'query':\n\
         \x20       print(v['query']['query'])\n",
    );
    assert!(exprs.lines().count() > 20, "{exprs}");
    let rules = std::fs::read_to_string(monitoring().join("pkcs11-proxy.rules.yml")).unwrap();
    let exported = exported();
    let in_dashboard = metric_names(&exprs);
    let in_rules = metric_names(&rules);
    eprintln!(
        "{} series names exported; the dashboard queries {}, the rules {}",
        exported.len(),
        in_dashboard.len(),
        in_rules.len()
    );
    for name in in_dashboard.iter().chain(&in_rules) {
        assert!(
            exported.contains(name),
            "{name} is queried but the server does not export it: {exported:?}"
        );
    }
    // Every family the server exports is on the dashboard (a histogram by its buckets).
    for name in &exported {
        let family = name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"))
            .map(|f| format!("{f}_bucket"))
            .unwrap_or_else(|| name.clone());
        assert!(
            in_dashboard.contains(&family),
            "{name} is exported but not on the dashboard"
        );
    }
}
