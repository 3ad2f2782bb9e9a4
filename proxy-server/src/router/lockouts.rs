//! PIN custody's lock-outs, counted by the router across every application of an identity
//! (each application is a worker of its own, so no worker alone could count them): after
//! `attempts` wrong client secrets within a window, the identity is locked out for that
//! window, and every worker, those started later included, answers its logins
//! `CKR_PIN_LOCKED` until then. Logins in flight in other workers when the limit is reached
//! may still be checked (and refused) before they hear of it.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

use crate::audit::now_ms;

#[derive(Default)]
struct Record {
    /// Wrong secrets within the window, oldest first (ms since the epoch).
    failures: VecDeque<u64>,
    locked_until: u64,
}

/// Every identity's wrong secrets and lock-out.
#[derive(Default)]
pub struct Lockouts {
    records: Mutex<HashMap<String, Record>>,
}

impl Lockouts {
    /// A wrong secret of `identity`: the end of its lock-out when this one locks it out.
    pub fn failed(&self, identity: &str, attempts: u32, window_ms: u64) -> Option<u64> {
        let now = now_ms();
        let mut records = self.records.lock();
        let r = records.entry(identity.to_string()).or_default();
        r.failures.push_back(now);
        while r.failures.front().is_some_and(|&t| t + window_ms <= now) {
            r.failures.pop_front();
        }
        if r.failures.len() < attempts as usize {
            return None;
        }
        r.failures.clear();
        r.locked_until = now + window_ms;
        Some(r.locked_until)
    }

    /// The identities locked out now, and until when: what a new worker starts with.
    pub fn current(&self) -> Vec<(String, u64)> {
        let now = now_ms();
        self.records
            .lock()
            .iter()
            .filter(|(_, r)| r.locked_until > now)
            .map(|(id, r)| (id.clone(), r.locked_until))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nth_wrong_secret_within_the_window_locks_out() {
        let l = Lockouts::default();
        assert_eq!(l.failed("peer", 3, 60_000), None);
        assert_eq!(l.failed("other", 3, 60_000), None);
        assert_eq!(l.failed("peer", 3, 60_000), None);
        let until = l.failed("peer", 3, 60_000).expect("locked at the third");
        assert!(until > now_ms() + 59_000);
        assert_eq!(l.current().len(), 1);
        assert_eq!(l.current()[0].0, "peer");
        // Outside a window of 0 ms no failure counts with another.
        assert_eq!(l.failed("fast", 2, 0), None);
        assert_eq!(l.failed("fast", 2, 0), None);
    }
}
