//! The operator's policy (DESIGN.md, "Identities, policy and audit"): what this server refuses
//! whatever the vendor library allows. Two layers, both opt-in: `--deny-function` and
//! `--deny-mechanism` for every client ([`denials`]), and `--policy FILE`: identities, each
//! matched by what its client presents ([`presented`]), with what it may call
//! ([`identities`]). Without them the vendor decides everything.

pub mod bucket;
pub mod denials;
mod glob;
pub mod identities;
pub mod presented;
pub mod secret;

pub use denials::Denials;
pub use identities::{Custody, Identities, Identity};
pub use presented::Presented;

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

/// What a worker enforces: the denials for every client, and with `--policy` the identities,
/// read at start and again at each reload (SIGHUP).
#[derive(Debug)]
pub struct Policy {
    pub denials: Denials,
    file: Option<PathBuf>,
    identities: RwLock<Option<Arc<Identities>>>,
}

impl Policy {
    pub fn load(
        deny_functions: &[String],
        deny_mechanisms: &[String],
        file: Option<PathBuf>,
    ) -> Result<Self, String> {
        let identities = file.as_deref().map(Identities::load).transpose()?;
        Ok(Self {
            denials: Denials::new(deny_functions, deny_mechanisms)?,
            file,
            identities: RwLock::new(identities.map(Arc::new)),
        })
    }

    /// Whether there are identities at all (`--policy`): without, nothing is looked up.
    pub fn applies(&self) -> bool {
        self.file.is_some()
    }

    /// The identities in force: `None` without `--policy` (every client served).
    pub fn identities(&self) -> Option<Arc<Identities>> {
        self.identities.read().clone()
    }

    /// Reads the policy file again; a file with a mistake is logged and the rules in force
    /// are kept.
    pub fn reload(&self) {
        let Some(path) = &self.file else { return };
        match Identities::load(path) {
            Ok(ids) => {
                tracing::info!(identities = ids.len(), "policy reloaded");
                *self.identities.write() = Some(Arc::new(ids));
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload failed; keeping the rules in force")
            }
        }
    }
}

/// What one client may call, under the policy in force.
#[derive(Debug, Clone)]
pub enum Rights {
    /// No `--policy`: the vendor decides.
    Everything,
    /// Its identity's rights.
    Of(Arc<Identity>),
    /// A reload took its identity away: every call is refused.
    Nothing,
}

impl Rights {
    /// The rights of a client that presented `presented`, under `identities`.
    pub fn of(identities: Option<&Identities>, presented: &Presented) -> Self {
        match identities {
            None => Self::Everything,
            Some(ids) => ids.find(presented).map_or(Self::Nothing, Self::Of),
        }
    }

    /// The identity, when it sees only some tokens.
    pub fn token_limits(&self) -> Option<&Identity> {
        match self {
            Self::Of(identity) if identity.limits_tokens() => Some(identity),
            _ => None,
        }
    }

    /// The identity, when it sees only some token objects.
    pub fn object_limits(&self) -> Option<&Identity> {
        match self {
            Self::Of(identity) if identity.limits_objects() => Some(identity),
            _ => None,
        }
    }

    /// The answer to a request these rights refuse (with a log line naming the identity).
    pub fn check(&self, request: &protocol::message::Request) -> Result<(), cryptoki_sys::CK_RV> {
        let function = request.descriptor().name;
        match self {
            Self::Everything => Ok(()),
            Self::Of(identity) => identity.check(request).map_err(|r| {
                tracing::warn!(
                    identity = %identity.name,
                    function,
                    rv = %crate::rv::name(r.rv),
                    "call refused by policy: {}",
                    r.why
                );
                r.rv
            }),
            Self::Nothing => {
                tracing::warn!(
                    function,
                    "call refused: no identity of the reloaded policy matches this client any more"
                );
                Err(cryptoki_sys::CKR_FUNCTION_NOT_SUPPORTED)
            }
        }
    }
}
