//! The audit log (DESIGN.md, "Identities, policy and audit"; `--audit-log PATH`,
//! `--audit management|all`): JSON lines, one per auditable event, each carrying `prev`, the
//! hex SHA-256 of the line before it, so that an edited, removed or reordered line breaks the
//! chain (`pkcs11-proxy-server audit verify PATH...`, [`verify`]).
//!
//! Workers see the calls and send their events to the router ([`Event`]); the router alone
//! writes the file ([`log`]), so that every application's events are on one chain.
//!
//! What is audited: with `management` (the default), C_Login, C_LoginUser and C_Logout,
//! every call that may change the token (objects created, copied, destroyed, their
//! attributes set, keys generated, unwrapped, derived, encapsulated or decapsulated, token and
//! PIN management), C_WrapKey and C_WrapKeyAuthenticated (a key leaves the HSM), and every
//! call the policy refused; with `all`, also every use of a key (each call naming a key:
//! C_SignInit, C_VerifyInit, C_VerifySignatureInit, C_EncryptInit...).

pub mod log;
pub mod verify;

use std::time::{SystemTime, UNIX_EPOCH};

use protocol::message::{Function, Request};
use serde::{Deserialize, Serialize};

/// How much is audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Logins, key and token management, wrapping, policy refusals.
    Management,
    /// Management, and every use of a key.
    All,
}

/// Whether a call of `request` is audited at `level` (refusals always are).
pub fn audited(level: Level, request: &Request) -> bool {
    let d = request.descriptor();
    let management = d.changes_token
        || d.carries_pin
        || matches!(
            request.function(),
            Function::Logout | Function::WrapKey | Function::WrapKeyAuthenticated
        );
    management || (level == Level::All && request.object_handles()[0].is_some())
}

/// One auditable event, as a worker tells it to the router.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch, when the call was answered.
    pub at_ms: u64,
    /// `call`, `refused` (by the policy), and the log's own: `start`, `gap`, `rotated`.
    pub event: String,
    pub identity: Option<String>,
    /// The application's label (the first digits of its routing id) and its number in its
    /// worker.
    pub application: Option<String>,
    pub client: Option<u64>,
    pub function: Option<String>,
    pub slot: Option<u64>,
    pub token: Option<String>,
    /// The object the call names: its CKA_ID (hex) and CKA_LABEL, as the vendor gave them.
    pub object_id: Option<String>,
    pub object_label: Option<String>,
    pub mechanism: Option<String>,
    pub rv: Option<String>,
    /// What else the record says (a refusal's reason, the events a gap lost, the file a
    /// rotation continues).
    pub detail: Option<String>,
}

/// Events a worker holds for the router, at most (its disk or the router far behind).
const MAX_PENDING: usize = 65_536;
/// Events that make a worker send its batch at once, and most events in one message to the
/// router (a message holds 128 KiB at most: an event is a few hundred bytes).
const BATCH: usize = 128;
/// Longest an event waits in a worker before it is sent.
const BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Events waiting to be sent, and those dropped since the last batch.
#[derive(Default)]
struct Batch {
    events: Vec<Event>,
    dropped: u64,
}

/// Where a worker's events go (to the router, over its control channel, in batches: a call
/// only adds its event to a list), and what it audits.
pub struct Sink {
    send: Box<dyn Fn(Vec<Event>, u64) + Send + Sync>,
    pub level: Level,
    /// The application's label.
    pub label: String,
    /// Token labels by slot, read once.
    tokens: parking_lot::Mutex<std::collections::HashMap<u64, String>>,
    batch: parking_lot::Mutex<Batch>,
    full: parking_lot::Condvar,
}

impl Sink {
    /// `send` gets each batch with the number of events dropped before it.
    pub fn new(
        level: Level,
        label: String,
        send: Box<dyn Fn(Vec<Event>, u64) + Send + Sync>,
    ) -> Self {
        Self {
            send,
            level,
            label,
            tokens: Default::default(),
            batch: Default::default(),
            full: Default::default(),
        }
    }

    /// Adds an event to the next batch (dropped and counted when too many wait).
    pub fn send(&self, event: Event) {
        let mut batch = self.batch.lock();
        if batch.events.len() >= MAX_PENDING {
            batch.dropped += 1;
            return;
        }
        batch.events.push(event);
        if batch.events.len() >= BATCH {
            self.full.notify_one();
        }
    }

    /// Sends batches every [`BATCH_DELAY`] (or sooner when one fills), for ever: the
    /// worker's audit thread.
    pub fn run(&self) {
        loop {
            {
                let mut batch = self.batch.lock();
                if batch.events.len() < BATCH {
                    self.full.wait_for(&mut batch, BATCH_DELAY);
                }
            }
            self.flush();
        }
    }

    /// Sends what waits now, [`BATCH`] events a message.
    pub fn flush(&self) {
        let mut batch = std::mem::take(&mut *self.batch.lock());
        let mut dropped = batch.dropped;
        while !batch.events.is_empty() || dropped > 0 {
            let rest = batch.events.split_off(batch.events.len().min(BATCH));
            (self.send)(std::mem::replace(&mut batch.events, rest), dropped);
            dropped = 0;
        }
    }

    /// The label of the token in `slot`, read with `read` the first time.
    pub fn token(&self, slot: u64, read: impl FnOnce() -> Option<String>) -> Option<String> {
        if let Some(label) = self.tokens.lock().get(&slot) {
            return Some(label.clone());
        }
        let label = read()?;
        self.tokens.lock().insert(slot, label.clone());
        Some(label)
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-12-06T03:15:17.123Z` for milliseconds since the Unix epoch (UTC; the days-to-date
/// conversion of Howard Hinnant's `civil_from_days`).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_covers_every_way_a_key_is_made_or_leaves_the_hsm() {
        use protocol::mechanism::{MechParam, Mechanism};
        use protocol::shape::{Array, Bytes, Out, Outputs};
        let m = Mechanism {
            ty: 0x17,
            param: MechParam::None,
        };
        let management = [
            Request::WrapKeyAuthenticated {
                session: 1,
                mechanism: m.clone(),
                wrapping_key: 2,
                key: 3,
                associated_data: Bytes::Null(0),
                capacity: Out::query(0),
            },
            Request::EncapsulateKey {
                session: 1,
                mechanism: m.clone(),
                public_key: 2,
                template: Array::Given(Vec::new()),
                capacity: Out::query(0),
                outputs: Outputs::ALL,
            },
            Request::DecapsulateKey {
                session: 1,
                mechanism: m.clone(),
                private_key: 2,
                template: Array::Given(Vec::new()),
                ciphertext: Bytes::Null(0),
                outputs: Outputs::ALL,
            },
        ];
        for r in &management {
            assert!(audited(Level::Management, r), "{:?}", r.function());
        }
        let use_of_a_key = Request::VerifySignatureInit {
            session: 1,
            mechanism: m,
            key: 2,
            signature: Bytes::Null(0),
        };
        assert!(!audited(Level::Management, &use_of_a_key));
        assert!(audited(Level::All, &use_of_a_key));
    }

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_796_527_717_456), "2026-12-06T03:28:37.456Z");
    }
}
