//! Healing what the HSM breaks (DESIGN.md, "Healing the HSM side"): an application's vendor
//! instance that lost its device stays broken until it is finalised and initialised again
//! (Thales Luna's HA documentation; the application would have to C_Finalize and start over,
//! which Fabric never does). The vendor decides what the outage looks like: the call gets the
//! vendor's answer. This module notices it, answers the calls that follow with the same code
//! at once (no pile-up of threads on a dead HSM), and says when the instance is to be
//! replaced: at once the first time, then with a backoff (0.5 s doubling to 30 s) while new
//! instances keep breaking. The worker then leaves ([`super::Worker`]), the router starts a
//! new one for the application, and the shim's recovery brings its sessions, login and
//! handles back there (DESIGN.md, "Recovery model").
//!
//! Only an application's worker heals (`--heal on`, the default): a shared worker's instance
//! is every application's.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cryptoki_sys::*;
use parking_lot::{Condvar, Mutex};
use protocol::message::{Function, Request};

use crate::control::{BrokenBy, HealSettings, Replaced};

/// The wait before the second replacement in a row; it doubles up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(500);
const LONGEST_WAIT: Duration = Duration::from_secs(30);

/// An instance that served this long before it broke starts the backoff over: its outage
/// is a new one.
const BACKOFF_MEMORY: Duration = Duration::from_secs(60);

/// The instance is broken: what the calls get until it is replaced, and when it is.
#[derive(Debug, Clone)]
pub struct Broken {
    pub by: BrokenBy,
    /// The vendor's answer that broke it, which the calls that follow get at once.
    pub rv: CK_RV,
    pub at: Instant,
    /// When the worker leaves for a new instance.
    pub replace_at: Instant,
    /// What the new instance inherits.
    pub replaced: Replaced,
}

/// What [`Heal::observe`] needs of a request: its function and where it went.
pub struct Seen {
    pub function: Function,
    pub slot: Option<u64>,
    pub session: Option<u64>,
}

impl From<&Request> for Seen {
    fn from(request: &Request) -> Self {
        Self {
            function: request.function(),
            slot: request.slot(),
            session: request.session(),
        }
    }
}

/// The healing state of one worker's vendor instance.
pub struct Heal {
    settings: HealSettings,
    started: Instant,
    /// Set once [`Heal::broken`] is: the hot path reads this alone.
    is_broken: AtomicBool,
    broken: Mutex<Option<Broken>>,
    changed: Condvar,
    /// Slots this instance opened a session on (a token there, initialised and recognised): a
    /// later CKR_TOKEN_NOT_PRESENT, CKR_TOKEN_NOT_RECOGNIZED or CKR_SLOT_ID_INVALID there is the
    /// token gone, not a slot that never had one, nor a token not initialised yet (SoftHSM2's
    /// free slot answers C_GetTokenInfo, then C_OpenSession with CKR_TOKEN_NOT_RECOGNIZED).
    present: Mutex<HashSet<u64>>,
    /// This instance answered a call since it started (after an outage: the HSM is back).
    answered: AtomicBool,
}

impl Heal {
    /// For a worker with these settings (`enabled` false: it never breaks).
    pub fn new(settings: HealSettings) -> Self {
        Self {
            present: Mutex::new(settings.present.iter().copied().collect()),
            settings,
            started: Instant::now(),
            is_broken: AtomicBool::new(false),
            broken: Mutex::new(None),
            changed: Condvar::new(),
            answered: AtomicBool::new(false),
        }
    }

    /// The answer every call gets at once while the instance is broken.
    pub fn fail_fast(&self) -> Option<CK_RV> {
        if !self.is_broken.load(Ordering::Acquire) {
            return None;
        }
        self.broken.lock().as_ref().map(|b| b.rv)
    }

    /// After the vendor answered `request` with `rv`: notes a token seen present, or the
    /// instance broken. `initialised`: whether the instance's C_Initialize succeeded (and no
    /// C_Finalize came). `answers(slot)`: whether the token in `slot` still answers
    /// C_GetTokenInfo. Never a PIN, argument or policy error: only the codes that mean the
    /// instance lost its device.
    ///
    /// A CKR_DEVICE_ERROR is confirmed first: if a token this instance saw present still
    /// answers, the device is there, and the code was the vendor's answer to this call alone
    /// (kryoptic, a software token, answers a short ML-KEM ciphertext with it). Replacing the
    /// instance then would only destroy the application's session objects, on demand of
    /// whoever sent the bad input.
    pub fn observe(
        &self,
        request: &Seen,
        rv: CK_RV,
        initialised: impl FnOnce() -> bool,
        answers: impl Fn(u64) -> bool,
    ) {
        if !self.settings.enabled {
            return;
        }
        let by = match rv {
            CKR_OK => {
                self.seen_ok(request);
                return;
            }
            CKR_DEVICE_ERROR if self.device_answers(answers) => {
                tracing::info!(
                    function = request.function.descriptor().name,
                    "CKR_DEVICE_ERROR, yet the token still answers: the vendor instance is kept"
                );
                return;
            }
            CKR_DEVICE_ERROR => BrokenBy::DeviceError,
            CKR_DEVICE_REMOVED => BrokenBy::DeviceRemoved,
            // The token (or its slot) this instance, or the application's instance before it,
            // saw is gone, or no longer recognised.
            CKR_TOKEN_NOT_PRESENT | CKR_TOKEN_NOT_RECOGNIZED | CKR_SLOT_ID_INVALID
                if self.token_was_present(request) =>
            {
                BrokenBy::TokenNotPresent
            }
            CKR_CRYPTOKI_NOT_INITIALIZED if initialised() => BrokenBy::NotInitialized,
            _ => return,
        };
        // C_Finalize's own answer ends the instance anyway.
        if request.function == Function::Finalize {
            return;
        }
        self.mark(by, rv);
    }

    /// A call outlived its deadline and was answered CKR_DEVICE_ERROR: its thread is stuck
    /// inside the vendor library, so the instance is broken.
    pub fn hung(&self) {
        self.mark(BrokenBy::HungCall, CKR_DEVICE_ERROR);
    }

    fn seen_ok(&self, request: &Seen) {
        // Read first: the hot path writes no shared cache line.
        if !self.answered.load(Ordering::Relaxed)
            && !self.answered.swap(true, Ordering::Relaxed)
            && self.settings.step > 0
        {
            tracing::warn!(
                outage_ms = since_epoch_ms().saturating_sub(self.settings.outage_since_ms),
                replacements = self.settings.step,
                "the new vendor instance answers: HSM outage over"
            );
        }
        if request.function == Function::OpenSession {
            if let Some(slot) = request.slot {
                self.present.lock().insert(slot);
            }
        }
    }

    /// Whether a token this instance saw present still answers (`answers(slot)`), asked
    /// without holding the lock.
    fn device_answers(&self, answers: impl Fn(u64) -> bool) -> bool {
        let slots: Vec<u64> = self.present.lock().iter().copied().collect();
        slots.into_iter().any(answers)
    }

    /// Whether the token `request` concerns was there before: a call on a session (its
    /// token was there when it was opened), or on a slot this instance saw a token in.
    fn token_was_present(&self, request: &Seen) -> bool {
        request.session.is_some()
            || request
                .slot
                .is_some_and(|slot| self.present.lock().contains(&slot))
    }

    /// The instance is broken (the first reason is kept).
    fn mark(&self, by: BrokenBy, rv: CK_RV) {
        let mut broken = self.broken.lock();
        if broken.is_some() {
            return;
        }
        let now = Instant::now();
        // A new outage starts the backoff over; one that goes on doubles the wait.
        let step = if now.duration_since(self.started) < BACKOFF_MEMORY {
            self.settings.step
        } else {
            0
        };
        let outage_since_ms = if step > 0 {
            self.settings.outage_since_ms
        } else {
            since_epoch_ms()
        };
        let delay = jittered(wait(step));
        let b = Broken {
            by,
            rv,
            at: now,
            replace_at: now + delay,
            replaced: Replaced {
                by,
                step: step + 1,
                outage_since_ms,
                present: self.present.lock().iter().copied().collect(),
            },
        };
        tracing::warn!(
            reason = by.label(),
            rv = %crate::rv::name(rv),
            replace_in_ms = delay.as_millis() as u64,
            "the vendor instance lost its device: calls answer {} at once until it is replaced",
            crate::rv::name(rv)
        );
        *broken = Some(b);
        self.is_broken.store(true, Ordering::Release);
        self.changed.notify_all();
    }

    /// The broken instance, if its replacement is due now.
    pub fn due(&self) -> Option<Broken> {
        self.broken
            .lock()
            .as_ref()
            .filter(|b| Instant::now() >= b.replace_at)
            .cloned()
    }

    /// Waits until the instance is broken and its replacement is due (the worker's healing
    /// thread), then returns why.
    pub fn wait_replacement(&self) -> Broken {
        let mut broken = self.broken.lock();
        loop {
            match broken.as_ref().map(|b| b.replace_at) {
                Some(at) if Instant::now() >= at => return broken.clone().expect("broken"),
                Some(at) => {
                    self.changed.wait_until(&mut broken, at);
                }
                None => self.changed.wait(&mut broken),
            }
        }
    }
}

/// Whether `rv` is one of the answers that mean a vendor instance lost its device (the
/// readiness probe's test; an application's instance is judged by [`Heal::observe`], which
/// also asks whether the token was there).
pub fn lost_device(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_DEVICE_ERROR
            | CKR_DEVICE_REMOVED
            | CKR_TOKEN_NOT_PRESENT
            | CKR_TOKEN_NOT_RECOGNIZED
            | CKR_CRYPTOKI_NOT_INITIALIZED
    )
}

/// The wait before replacing an instance at backoff `step`: none the first time (the
/// application's next call runs on a new instance), then 0.5 s doubling to 30 s.
fn wait(step: u32) -> Duration {
    match step {
        0 => Duration::ZERO,
        n => FIRST_WAIT
            .saturating_mul(1 << (n - 1).min(16))
            .min(LONGEST_WAIT),
    }
}

/// `wait` and up to a quarter more, at random: the applications an outage broke together are
/// not replaced together (no storm of re-initialisations on an HSM that is coming back), and
/// never sooner than the backoff says.
fn jittered(wait: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A random number from std: each RandomState has random keys.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let spread = (wait / 4).as_nanos() as u64;
    wait + Duration::from_nanos(random.checked_rem(spread + 1).unwrap_or(0))
}

fn since_epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::shape::Outputs;

    fn open(slot: u64) -> Request {
        Request::OpenSession {
            slot,
            flags: 6,
            outputs: Outputs::ALL,
        }
    }

    fn heal(step: u32) -> Heal {
        Heal::new(HealSettings {
            enabled: true,
            step,
            outage_since_ms: 1,
            present: vec![7],
            ..Default::default()
        })
    }

    #[test]
    fn the_backoff_doubles_from_half_a_second_to_thirty() {
        let waits: Vec<u64> = (0..10).map(|s| wait(s).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [0, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(wait(u32::MAX), LONGEST_WAIT);
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
        let second = Duration::from_secs(1);
        let draws: Vec<Duration> = (0..200).map(|_| jittered(second)).collect();
        assert!(draws.iter().all(|d| (second..=second * 5 / 4).contains(d)));
        assert!(
            draws.iter().any(|d| *d < second * 9 / 8) && draws.iter().any(|d| *d > second * 9 / 8)
        );
    }

    #[test]
    fn only_a_lost_device_breaks_the_instance() {
        let h = heal(0);
        let sign = Request::SignFinal {
            session: 1,
            capacity: protocol::shape::Out::query(0),
        };
        for rv in [
            CKR_PIN_INCORRECT,
            CKR_ARGUMENTS_BAD,
            CKR_FUNCTION_NOT_SUPPORTED,
        ] {
            h.observe(&(&sign).into(), rv, || true, |_| false);
        }
        // A slot that never had a token; not initialised by the application (yet).
        for rv in [
            CKR_TOKEN_NOT_PRESENT,
            CKR_TOKEN_NOT_RECOGNIZED,
            CKR_SLOT_ID_INVALID,
        ] {
            h.observe(&Seen::from(&open(3)), rv, || true, |_| false);
        }
        h.observe(
            &Seen::from(&open(0)),
            CKR_CRYPTOKI_NOT_INITIALIZED,
            || false,
            |_| false,
        );
        h.observe(
            &Seen::from(&Request::Finalize {}),
            CKR_DEVICE_ERROR,
            || true,
            |_| false,
        );
        assert_eq!(h.fail_fast(), None);
        // A token that answers C_GetTokenInfo but is not initialised yet (SoftHSM2's free
        // slot) refuses a session: not a token gone.
        let token_info = Request::GetTokenInfo {
            slot: 5,
            outputs: Outputs::ALL,
        };
        h.observe(&Seen::from(&token_info), CKR_OK, || true, |_| false);
        h.observe(
            &Seen::from(&open(5)),
            CKR_TOKEN_NOT_RECOGNIZED,
            || true,
            |_| false,
        );
        assert_eq!(h.fail_fast(), None);
        // The token of slot 0 was there, then went.
        h.observe(&Seen::from(&open(0)), CKR_OK, || true, |_| false);
        h.observe(
            &Seen::from(&open(0)),
            CKR_TOKEN_NOT_PRESENT,
            || true,
            |_| false,
        );
        assert_eq!(h.fail_fast(), Some(CKR_TOKEN_NOT_PRESENT));
        // The first reason stays.
        h.observe(&(&sign).into(), CKR_DEVICE_ERROR, || true, |_| false);
        let b = h.wait_replacement();
        assert_eq!(
            (b.by, b.rv),
            (BrokenBy::TokenNotPresent, CKR_TOKEN_NOT_PRESENT)
        );
        assert_eq!(b.replaced.step, 1);
    }

    #[test]
    fn a_device_error_while_the_token_still_answers_keeps_the_instance() {
        let h = heal(0);
        h.observe(&Seen::from(&open(0)), CKR_OK, || true, |_| false);
        // Asked about the tokens seen present only (slot 0, and 7 from the instance before);
        // the one of slot 0 answers.
        let asked = Mutex::new(Vec::new());
        let answers = |slot| {
            asked.lock().push(slot);
            slot == 0
        };
        h.observe(&Seen::from(&open(0)), CKR_DEVICE_ERROR, || true, answers);
        assert_eq!(h.fail_fast(), None);
        let mut asked = asked.into_inner();
        asked.sort();
        assert!(asked == [0] || asked == [0, 7], "{asked:?}");
        // It no longer answers: the device is gone.
        h.observe(&Seen::from(&open(0)), CKR_DEVICE_ERROR, || true, |_| false);
        assert_eq!(h.fail_fast(), Some(CKR_DEVICE_ERROR));
    }

    #[test]
    fn an_outage_that_goes_on_inherits_its_start_and_waits_longer() {
        let h = heal(3);
        h.observe(&Seen::from(&open(0)), CKR_DEVICE_ERROR, || true, |_| false);
        let b = h.broken.lock().clone().expect("broken");
        let waited = b.replace_at - b.at;
        assert!((2000..=2500).contains(&waited.as_millis()), "{waited:?}");
        assert_eq!((b.replaced.step, b.replaced.outage_since_ms), (4, 1));
        // The slot a previous instance saw a token in: its token is gone now.
        assert!(b.replaced.present.contains(&7));
        let inherited = heal(1);
        inherited.observe(
            &Seen::from(&open(7)),
            CKR_SLOT_ID_INVALID,
            || true,
            |_| false,
        );
        assert_eq!(inherited.fail_fast(), Some(CKR_SLOT_ID_INVALID));
        // Off: nothing breaks.
        let off = Heal::new(HealSettings::default());
        off.observe(&Seen::from(&open(0)), CKR_DEVICE_ERROR, || true, |_| false);
        assert_eq!(off.fail_fast(), None);
    }
}
