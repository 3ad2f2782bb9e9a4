//! `--policy FILE` (DESIGN.md, "Identities, policy and audit"): the identities this server
//! serves, each matched by what its client presents, and what each may call. With a policy,
//! a client that matches no identity is refused in the handshake (deny by default).
//!
//! ```toml
//! [[identity]]
//! name = "org1-peer0"
//! certificate_cn = "peer0.org1.example.com"   # or certificate_dns, certificate_sha256, uid
//! role = "signer"                             # signer (default), enroller, admin
//! allow_functions = ["C_EncryptInit", "C_Encrypt"]   # beyond the role
//! deny_functions = ["C_SeedRandom"]                  # within the role
//! allow_mechanisms = ["CKM_ECDSA", "CKM_EC_KEY_PAIR_GEN"]   # only these (names or numbers)
//! deny_mechanisms = ["0x1"]
//! tokens = ["org1", "shared-*"]               # token labels it sees (`*`: any run)
//! object_labels = ["org1-*"]                  # token objects it sees, by CKA_LABEL
//! object_ids = ["3a5f*"]                      # or by CKA_ID (lower-case hex)
//! pin_file = "/run/secrets/org1-user-pin"     # PIN custody: the partition's user PIN
//! client_secret = "pbkdf2-sha256$100000$...$..."  # what the node presents as its PIN
//! pin_attempts = 5                            # wrong secrets before a lock-out
//! pin_lockout_seconds = 300                   # within this window; locked as long
//! rate_limit = 2000                           # calls a second, per application
//! max_sessions = 64                           # sessions open at once, per application
//! ```
//!
//! What a call beyond an identity's rights gets (each with a log line naming the identity):
//! a function its role does not include, or denied, `CKR_FUNCTION_NOT_SUPPORTED` (as a
//! library without it); a mechanism not allowed, `CKR_MECHANISM_INVALID`; C_Login or
//! C_LoginUser as the Security Officer by an identity that is not `admin`,
//! `CKR_USER_TYPE_INVALID`. With `tokens`, a slot whose token's label matches none of them is
//! not there: absent from C_GetSlotList, and `CKR_SLOT_ID_INVALID` for every call naming it
//! (one proxy then serves several partitions, each identity seeing its own). With
//! `object_labels` or `object_ids`, a token object whose CKA_LABEL matches none of the first
//! and whose CKA_ID (in hex) matches none of the second is not there either: absent from
//! searches, and `CKR_OBJECT_HANDLE_INVALID` (`CKR_KEY_HANDLE_INVALID` where the handle is a
//! key) for every call naming it. Session objects, and the objects the application made
//! itself, are always its own.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use cryptoki_sys::*;
use protocol::function::Access;
use protocol::message::{Function, Request};
use serde::Deserialize;

use super::presented::Presented;

/// One `[[identity]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    name: String,
    certificate_cn: Option<String>,
    certificate_dns: Option<String>,
    certificate_sha256: Option<String>,
    uid: Option<u32>,
    #[serde(default)]
    role: Role,
    #[serde(default)]
    allow_functions: Vec<String>,
    #[serde(default)]
    deny_functions: Vec<String>,
    #[serde(default)]
    allow_mechanisms: Vec<String>,
    #[serde(default)]
    deny_mechanisms: Vec<String>,
    tokens: Option<Vec<String>>,
    object_labels: Option<Vec<String>>,
    object_ids: Option<Vec<String>>,
    pin_file: Option<std::path::PathBuf>,
    client_secret: Option<String>,
    pin_attempts: Option<u32>,
    pin_lockout_seconds: Option<u64>,
    rate_limit: Option<u32>,
    max_sessions: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    identity: Vec<IdentityFile>,
}

/// The roles of the policy file, as [`Access`] levels.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Role {
    #[default]
    Signer,
    Enroller,
    Admin,
}

impl From<Role> for Access {
    fn from(r: Role) -> Self {
        match r {
            Role::Signer => Access::Signer,
            Role::Enroller => Access::Enroller,
            Role::Admin => Access::Admin,
        }
    }
}

/// What an identity is matched by.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Match {
    Cn(String),
    Dns(String),
    Sha256(String),
    Uid(u32),
}

impl Match {
    fn matches(&self, presented: &Presented) -> bool {
        match (self, presented) {
            (Match::Cn(want), Presented::Certificate { cn: Some(cn), .. }) => want == cn,
            (Match::Dns(want), Presented::Certificate { dns, .. }) => {
                dns.iter().any(|d| d.eq_ignore_ascii_case(want))
            }
            (Match::Sha256(want), Presented::Certificate { sha256, .. }) => want == sha256,
            (Match::Uid(want), Presented::Uid(uid)) => want == uid,
            _ => false,
        }
    }
}

/// A refused call: the answer, and why (for the log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rv: CK_RV,
    pub why: String,
}

/// One identity of the policy and what it may call.
#[derive(Debug)]
pub struct Identity {
    pub name: String,
    matched_by: Match,
    access: Access,
    allowed_functions: HashSet<Function>,
    denied_functions: HashSet<Function>,
    allowed_mechanisms: HashSet<u64>,
    denied_mechanisms: HashSet<u64>,
    /// Patterns of the token labels it sees; `None`: every token.
    tokens: Option<Vec<String>>,
    /// Patterns of the CKA_LABEL and CKA_ID (hex) of the token objects it sees; both `None`:
    /// every object.
    object_labels: Option<Vec<String>>,
    object_ids: Option<Vec<String>>,
    /// PIN custody: the proxy logs in with the partition's PIN.
    pub custody: Option<Custody>,
    /// Calls a second each of its applications may make (a burst of one second's worth).
    pub rate_limit: Option<u32>,
    /// Sessions each of its applications may have open at once.
    pub max_sessions: Option<u32>,
}

/// PIN custody (OPERATIONS.md, "PIN custody"): the partition's user PIN is kept in a file the
/// proxy reads at each login; the node presents a client secret of its own, checked against
/// its slow hash; wrong secrets lock the identity out without one bad try reaching the HSM.
#[derive(Debug)]
pub struct Custody {
    pub pin_file: std::path::PathBuf,
    pub secret: super::secret::Hashed,
    /// Wrong secrets within `window` that lock the identity out for `window`.
    pub attempts: u32,
    pub window: std::time::Duration,
}

impl Identity {
    /// Whether it sees the token labelled `label` (the label as CK_TOKEN_INFO pads it).
    pub fn sees_token(&self, label: &[u8]) -> bool {
        let label = trim_padding(label);
        match &self.tokens {
            None => true,
            Some(patterns) => patterns
                .iter()
                .any(|p| super::glob::matches(p.as_bytes(), label)),
        }
    }

    /// Whether it sees only some tokens.
    pub fn limits_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Whether it sees only some token objects.
    pub fn limits_objects(&self) -> bool {
        self.object_labels.is_some() || self.object_ids.is_some()
    }

    /// Whether it sees the token object of CKA_LABEL `label` and CKA_ID `id` (`None`: the
    /// object has none, or the vendor did not say).
    pub fn sees_object(&self, label: Option<&[u8]>, id: Option<&[u8]>) -> bool {
        if !self.limits_objects() {
            return true;
        }
        let any = |patterns: &Option<Vec<String>>, value: Option<&[u8]>| match (patterns, value) {
            (Some(patterns), Some(v)) => patterns
                .iter()
                .any(|p| super::glob::matches(p.as_bytes(), v)),
            _ => false,
        };
        let hex = id.map(|id| id.iter().map(|b| format!("{b:02x}")).collect::<String>());
        any(&self.object_labels, label) || any(&self.object_ids, hex.as_deref().map(str::as_bytes))
    }

    /// The refusal of `request`, if this identity may not make it.
    pub fn check(&self, request: &Request) -> Result<(), Refusal> {
        let function = request.function();
        let d = function.descriptor();
        let granted = d.access <= self.access || self.allowed_functions.contains(&function);
        if !granted || self.denied_functions.contains(&function) {
            return Err(Refusal {
                rv: CKR_FUNCTION_NOT_SUPPORTED,
                why: format!("{} is not among its functions", d.name),
            });
        }
        if let Request::Login { user_type, .. } | Request::LoginUser { user_type, .. } = request {
            if *user_type == protocol::ulong::wire(CKU_SO) && self.access < Access::Admin {
                return Err(Refusal {
                    rv: CKR_USER_TYPE_INVALID,
                    why: format!("{} as the Security Officer needs the admin role", d.name),
                });
            }
        }
        if let Some(m) = request.mechanism().and_then(|m| m.given()) {
            let allowed =
                self.allowed_mechanisms.is_empty() || self.allowed_mechanisms.contains(&m.ty);
            if !allowed || self.denied_mechanisms.contains(&m.ty) {
                let name = protocol::names::or_hex(protocol::names::mechanism(m.ty), m.ty);
                return Err(Refusal {
                    rv: CKR_MECHANISM_INVALID,
                    why: format!("{name} is not among its mechanisms"),
                });
            }
        }
        Ok(())
    }
}

/// Every identity of a policy file, in its order.
#[derive(Debug)]
pub struct Identities {
    list: Vec<Arc<Identity>>,
}

impl Identities {
    /// Reads and checks a policy file: every error names the identity and the key.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("policy {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("policy {}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.identity.is_empty() {
            return Err("no [[identity]]: every client would be refused".into());
        }
        let mut names = HashSet::new();
        let mut list = Vec::new();
        for i in file.identity {
            if !names.insert(i.name.clone()) {
                return Err(format!("identity {:?} is named twice", i.name));
            }
            list.push(Arc::new(build(i)?));
        }
        Ok(Self { list })
    }

    /// The identity of a client that presented `presented`: the first that matches.
    pub fn find(&self, presented: &Presented) -> Option<Arc<Identity>> {
        self.list
            .iter()
            .find(|i| i.matched_by.matches(presented))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }
}

fn build(i: IdentityFile) -> Result<Identity, String> {
    let name = i.name;
    let at = |what: String| format!("identity {name:?}: {what}");
    let matches: Vec<Match> = [
        i.certificate_cn.map(Match::Cn),
        i.certificate_dns.map(Match::Dns),
        i.certificate_sha256
            .map(|h| Match::Sha256(h.replace(':', "").to_ascii_lowercase())),
        i.uid.map(Match::Uid),
    ]
    .into_iter()
    .flatten()
    .collect();
    let [matched_by] = <[Match; 1]>::try_from(matches).map_err(|m| {
        at(format!(
            "needs exactly one of certificate_cn, certificate_dns, certificate_sha256 and uid ({} given)",
            m.len()
        ))
    })?;
    if let Match::Sha256(h) = &matched_by {
        if h.len() != 64 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(at(format!("certificate_sha256 {h:?} is not 64 hex digits")));
        }
    }
    let functions = |list: &[String], key: &str| -> Result<HashSet<Function>, String> {
        list.iter()
            .map(|f| {
                Function::ALL
                    .iter()
                    .copied()
                    .find(|x| x.descriptor().name == f)
                    .ok_or_else(|| {
                        at(format!(
                            "{key}: {f} is not a PKCS#11 function the proxy serves"
                        ))
                    })
            })
            .collect()
    };
    let mechanisms = |list: &[String], key: &str| -> Result<HashSet<u64>, String> {
        list.iter()
            .map(|m| {
                mechanism_value(m)
                    .ok_or_else(|| at(format!("{key}: {m} is neither a CKM_ name nor a number")))
            })
            .collect()
    };
    Ok(Identity {
        allowed_functions: functions(&i.allow_functions, "allow_functions")?,
        denied_functions: functions(&i.deny_functions, "deny_functions")?,
        allowed_mechanisms: mechanisms(&i.allow_mechanisms, "allow_mechanisms")?,
        denied_mechanisms: mechanisms(&i.deny_mechanisms, "deny_mechanisms")?,
        access: i.role.into(),
        custody: custody(
            &name,
            i.pin_file,
            i.client_secret,
            i.pin_attempts,
            i.pin_lockout_seconds,
        )?,
        rate_limit: match i.rate_limit {
            Some(0) => return Err(at("rate_limit = 0 would refuse every call".into())),
            r => r,
        },
        max_sessions: i.max_sessions,
        tokens: i.tokens,
        object_labels: i.object_labels,
        object_ids: i
            .object_ids
            .map(|ids| ids.iter().map(|p| p.to_ascii_lowercase()).collect()),
        matched_by,
        name,
    })
}

/// PIN custody's settings: a PIN file and a client secret, together.
fn custody(
    name: &str,
    pin_file: Option<std::path::PathBuf>,
    secret: Option<String>,
    attempts: Option<u32>,
    lockout: Option<u64>,
) -> Result<Option<Custody>, String> {
    let at = |what: String| format!("identity {name:?}: {what}");
    match (pin_file, secret) {
        (None, None) => {
            if attempts.is_some() || lockout.is_some() {
                return Err(at(
                    "pin_attempts and pin_lockout_seconds go with pin_file".into()
                ));
            }
            Ok(None)
        }
        (Some(pin_file), Some(secret)) => {
            std::fs::metadata(&pin_file)
                .map_err(|e| at(format!("pin_file {}: {e}", pin_file.display())))?;
            Ok(Some(Custody {
                pin_file,
                secret: super::secret::Hashed::parse(&secret).map_err(at)?,
                attempts: attempts.unwrap_or(5).max(1),
                window: std::time::Duration::from_secs(lockout.unwrap_or(300).max(1)),
            }))
        }
        _ => Err(at("pin_file and client_secret go together".into())),
    }
}

/// A label without the blanks (or NULs) that pad it to 32 bytes (v2.40 §3.2, CK_TOKEN_INFO).
fn trim_padding(label: &[u8]) -> &[u8] {
    let end = label
        .iter()
        .rposition(|&c| c != b' ' && c != 0)
        .map_or(0, |i| i + 1);
    &label[..end]
}

/// A mechanism by its `CKM_` name, or its number (decimal or 0x hex, as vendors document
/// their own).
fn mechanism_value(m: &str) -> Option<u64> {
    if let Some(v) = protocol::names::mechanism_value(m) {
        return Some(v);
    }
    match m.strip_prefix("0x").or_else(|| m.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => m.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::mechanism::{MechParam, Mechanism};
    use protocol::shape::{Array, Out};

    const POLICY: &str = r#"
        [[identity]]
        name = "org1-peer0"
        certificate_cn = "peer0.org1"

        [[identity]]
        name = "ca"
        certificate_sha256 = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"
        role = "enroller"
        deny_functions = ["C_DestroyObject"]
        allow_mechanisms = ["CKM_EC_KEY_PAIR_GEN", "CKM_ECDSA"]

        [[identity]]
        name = "ops"
        uid = 1000
        role = "admin"
    "#;

    fn cert(cn: &str, sha256: &str) -> Presented {
        Presented::Certificate {
            cn: Some(cn.into()),
            dns: vec![],
            sha256: sha256.into(),
        }
    }

    fn sign_init(ty: u64) -> Request {
        Request::SignInit {
            session: 1,
            mechanism: Mechanism {
                ty,
                param: MechParam::None,
            },
            key: 2,
        }
    }

    #[test]
    fn identities_match_by_what_the_client_presented_and_nothing_else() {
        let ids = Identities::parse(POLICY).unwrap();
        assert_eq!(ids.len(), 3);
        let name = |p: &Presented| ids.find(p).map(|i| i.name.clone());
        assert_eq!(
            name(&cert("peer0.org1", "00")).as_deref(),
            Some("org1-peer0")
        );
        let fp = "abcdef0123456789".repeat(4);
        assert_eq!(name(&cert("anything", &fp)).as_deref(), Some("ca"));
        assert_eq!(name(&Presented::Uid(1000)).as_deref(), Some("ops"));
        assert_eq!(name(&Presented::Uid(1001)), None);
        assert_eq!(name(&cert("peer0.org2", "00")), None);
        assert_eq!(name(&Presented::Nothing), None);
    }

    #[test]
    fn roles_functions_mechanisms_and_so_login_are_refused_as_documented() {
        let ids = Identities::parse(POLICY).unwrap();
        let peer = ids.find(&cert("peer0.org1", "00")).unwrap();
        let ca = ids.find(&cert("x", &"abcdef0123456789".repeat(4))).unwrap();
        let ops = ids.find(&Presented::Uid(1000)).unwrap();
        let generate = Request::GenerateKeyPair {
            session: 1,
            mechanism: Mechanism {
                ty: protocol::ulong::wire(CKM_EC_KEY_PAIR_GEN),
                param: MechParam::None,
            },
            public_template: Array::Given(vec![]),
            private_template: Array::Given(vec![]),
            outputs: protocol::shape::Outputs::ALL,
        };
        let destroy = Request::DestroyObject {
            session: 1,
            object: 3,
        };
        let so_login = Request::Login {
            session: 1,
            user_type: protocol::ulong::wire(CKU_SO),
            pin: None,
        };
        let user_login = Request::Login {
            session: 1,
            user_type: protocol::ulong::wire(CKU_USER),
            pin: None,
        };
        let sign = Request::Sign {
            session: 1,
            data: Array::Given(vec![0; 32]),
            capacity: Out::query(0),
        };
        let rv = |i: &Identity, r: &Request| i.check(r).err().map(|e| e.rv);
        // A signer signs and logs in as a user; it does not generate, destroy, or log in as SO.
        assert_eq!(
            rv(&peer, &sign_init(protocol::ulong::wire(CKM_ECDSA))),
            None
        );
        assert_eq!(rv(&peer, &sign), None);
        assert_eq!(rv(&peer, &user_login), None);
        assert_eq!(rv(&peer, &generate), Some(CKR_FUNCTION_NOT_SUPPORTED));
        assert_eq!(rv(&peer, &destroy), Some(CKR_FUNCTION_NOT_SUPPORTED));
        assert_eq!(rv(&peer, &so_login), Some(CKR_USER_TYPE_INVALID));
        // The enroller generates with its mechanisms only, and its denied function is denied.
        assert_eq!(rv(&ca, &generate), None);
        assert_eq!(rv(&ca, &destroy), Some(CKR_FUNCTION_NOT_SUPPORTED));
        assert_eq!(
            rv(&ca, &sign_init(protocol::ulong::wire(CKM_ECDSA_SHA256))),
            Some(CKR_MECHANISM_INVALID)
        );
        assert_eq!(rv(&ca, &so_login), Some(CKR_USER_TYPE_INVALID));
        // The admin does everything.
        assert_eq!(rv(&ops, &so_login), None);
        assert_eq!(rv(&ops, &destroy), None);
    }

    #[test]
    fn token_labels_are_matched_without_their_padding() {
        let ids = Identities::parse(
            "[[identity]]\nname = \"a\"\nuid = 1\ntokens = [\"org1\", \"shared-*\"]\n\
             [[identity]]\nname = \"b\"\nuid = 2\n",
        )
        .unwrap();
        let a = ids.find(&Presented::Uid(1)).unwrap();
        let b = ids.find(&Presented::Uid(2)).unwrap();
        let padded = |l: &str| format!("{l:<32}").into_bytes();
        assert!(a.sees_token(&padded("org1")));
        assert!(a.sees_token(&padded("shared-fabric")));
        assert!(!a.sees_token(&padded("org2")));
        assert!(!a.sees_token(&padded("org10")));
        assert!(a.limits_tokens() && !b.limits_tokens());
        assert!(b.sees_token(&padded("anything")));
    }

    #[test]
    fn token_objects_are_seen_by_label_or_by_id_in_hex() {
        let ids = Identities::parse(
            "[[identity]]\nname = \"a\"\nuid = 1\nobject_labels = [\"org1-*\"]\nobject_ids = [\"0A1B*\"]\n\
             [[identity]]\nname = \"b\"\nuid = 2\n",
        )
        .unwrap();
        let a = ids.find(&Presented::Uid(1)).unwrap();
        let b = ids.find(&Presented::Uid(2)).unwrap();
        assert!(a.sees_object(Some(b"org1-peer0"), None));
        assert!(a.sees_object(Some(b"other"), Some(&[0x0a, 0x1b, 0xff])));
        assert!(!a.sees_object(Some(b"org2-peer0"), Some(&[0x0a, 0x1c])));
        assert!(!a.sees_object(None, None));
        assert!(b.sees_object(None, None) && !b.limits_objects());
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        for (text, says) in [
            ("", "no [[identity]]"),
            ("[[identity]]\nname = \"a\"\n", "exactly one of"),
            (
                "[[identity]]\nname = \"a\"\nuid = 1\ncertificate_cn = \"x\"\n",
                "(2 given)",
            ),
            (
                "[[identity]]\nname = \"a\"\nuid = 1\nrole = \"root\"\n",
                "unknown variant",
            ),
            (
                "[[identity]]\nname = \"a\"\nuid = 1\n[[identity]]\nname = \"a\"\nuid = 2\n",
                "named twice",
            ),
            (
                "[[identity]]\nname = \"a\"\nuid = 1\nallow_functions = [\"C_Nothing\"]\n",
                "C_Nothing is not",
            ),
            (
                "[[identity]]\nname = \"a\"\nuid = 1\nallow_mechanisms = [\"CKM_NOPE\"]\n",
                "CKM_NOPE is neither",
            ),
            (
                "[[identity]]\nname = \"a\"\ncertificate_sha256 = \"abc\"\n",
                "not 64 hex digits",
            ),
            (
                "[[identity]]\nname = \"a\"\nuid = 1\ncolour = \"red\"\n",
                "unknown field",
            ),
        ] {
            let e = Identities::parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
