//! Deadlines on vendor calls (DESIGN.md, "Healing the HSM side"). A network HSM client that
//! lost its HSM may block a call for minutes (C_OpenSession after an idle period, then
//! CKR_CRYPTOKI_NOT_INITIALIZED); a Fabric endorsement waiting that long is an outage. A call
//! that outlives its deadline (`--call-deadline`, or `--slow-call-deadline` for the calls
//! whose [`Deadline`] is `Slow`) is abandoned: its caller gets CKR_DEVICE_ERROR at once, on
//! its own connection, which is then closed; the thread stays inside the vendor library, so
//! the instance is broken and replaced ([`super::heal`]).
//!
//! How: a connection's stream sits in a [`Line`] behind a lock its own thread holds, but
//! while the vendor works on a call with a deadline. The [`Watchdog`] looks at each line it
//! can lock (never waiting: a connection reading or writing is not in a vendor call), and
//! the worker answers for a call past its deadline. The thread, if the vendor ever returns, finds its
//! line abandoned and drops the vendor's late answer. Per call this costs one unlock and one
//! lock of a lock nobody else holds.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::CKR_DEVICE_ERROR;
use parking_lot::Mutex;
use protocol::codec;
use protocol::frame::write_frame;
use protocol::function::{Deadline, Descriptor};
use protocol::message::Response;
use protocol::stream::Stream;

use crate::control::HealSettings;
use crate::worker::ulong::wire;

/// The deadline of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub after: Duration,
    /// `--slow-call-deadline` rather than `--call-deadline`.
    pub slow: bool,
}

/// A call in flight on a line.
struct InCall {
    function: &'static str,
    started: Instant,
    limit: Limit,
}

/// One connection's stream, and the call the vendor is working on for it.
pub struct Line {
    pub reader: BufReader<Stream>,
    call: Option<InCall>,
    abandoned: bool,
}

impl Line {
    pub fn new(reader: BufReader<Stream>) -> Self {
        Self {
            reader,
            call: None,
            abandoned: false,
        }
    }

    /// The vendor starts working on `function` for this line, within `limit`.
    pub fn begin(&mut self, function: &'static str, started: Instant, limit: Limit) {
        self.call = Some(InCall {
            function,
            started,
            limit,
        });
    }

    /// The vendor answered: whether the answer is still wanted (the call was not abandoned).
    pub fn end(&mut self) -> bool {
        self.call = None;
        !self.abandoned
    }
}

/// A call the watchdog abandoned, to be answered ([`Abandoned::answer`]).
pub struct Abandoned {
    /// The connection it came on.
    pub connection: u64,
    pub function: &'static str,
    pub limit: Limit,
    line: Arc<Mutex<Line>>,
}

impl Abandoned {
    /// Answers CKR_DEVICE_ERROR on the call's connection and closes it: the client gets the
    /// answer, then the end of the connection, and never sends another request there.
    pub fn answer(&self) {
        let mut line = self.line.lock();
        let mut out = Vec::new();
        let stream = line.reader.get_mut();
        if codec::encode(&Response::Rv(wire(CKR_DEVICE_ERROR)), &mut out).is_ok() {
            let _ = write_frame(stream, &out, &mut Vec::new());
            let _ = stream.flush();
        }
        stream.shutdown(Shutdown::Both);
    }
}

/// Watches the lines of one worker.
pub struct Watchdog {
    /// `None`: no deadline (`--heal off`, a shared worker, the readiness probe).
    deadlines: Option<(Duration, Duration)>,
    lines: Mutex<HashMap<u64, Arc<Mutex<Line>>>>,
}

impl Watchdog {
    /// For a worker with these healing settings (deadlines only where healing is on).
    pub fn new(settings: &HealSettings) -> Self {
        Self {
            deadlines: settings
                .enabled
                .then_some((settings.call_deadline, settings.slow_call_deadline)),
            lines: Mutex::new(HashMap::new()),
        }
    }

    /// Whether calls have deadlines here.
    pub fn enabled(&self) -> bool {
        self.deadlines.is_some()
    }

    /// The deadline of a call of `function`, if it has one.
    pub fn limit(&self, function: &Descriptor) -> Option<Limit> {
        let (call, slow) = self.deadlines?;
        match function.deadline {
            Deadline::Call => Some(Limit {
                after: call,
                slow: false,
            }),
            Deadline::Slow => Some(Limit {
                after: slow,
                slow: true,
            }),
            Deadline::Unbounded => None,
        }
    }

    /// How often [`Watchdog::sweep`] runs: an abandoned call is answered at most this late.
    pub fn tick(&self) -> Duration {
        let call = self
            .deadlines
            .map_or(Duration::from_secs(1), |(call, _)| call);
        (call / 20).clamp(Duration::from_millis(50), Duration::from_millis(250))
    }

    /// Connection `id`'s stream, watched from now on (when calls have deadlines).
    pub fn watch(&self, id: u64, reader: BufReader<Stream>) -> Arc<Mutex<Line>> {
        let line = Arc::new(Mutex::new(Line::new(reader)));
        if self.enabled() {
            self.lines.lock().insert(id, line.clone());
        }
        line
    }

    /// Connection `id` ended.
    pub fn unwatch(&self, id: u64) {
        if self.enabled() {
            self.lines.lock().remove(&id);
        }
    }

    /// Abandons every call past its deadline at `now`: its thread will drop the vendor's
    /// answer, if it ever comes. The calls abandoned, to be answered.
    pub fn sweep(&self, now: Instant) -> Vec<Abandoned> {
        self.abandon(|call| now >= call.started + call.limit.after)
    }

    /// Abandons every call the vendor is still working on (the worker exits).
    pub fn abandon_all(&self) -> Vec<Abandoned> {
        self.abandon(|_| true)
    }

    fn abandon(&self, due: impl Fn(&InCall) -> bool) -> Vec<Abandoned> {
        let mut abandoned = Vec::new();
        self.lines.lock().retain(|&connection, shared| {
            // A line its thread holds is reading or writing, not waiting on the vendor.
            let Some(mut line) = shared.try_lock() else {
                return true;
            };
            let Some(call) = line.call.take_if(|c| due(c)) else {
                return true;
            };
            line.abandoned = true;
            abandoned.push(Abandoned {
                connection,
                function: call.function,
                limit: call.limit,
                line: shared.clone(),
            });
            false
        });
        abandoned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::frame::read_frame;
    use protocol::message::Function;
    use std::os::unix::net::UnixStream;

    fn watchdog(enabled: bool) -> Watchdog {
        Watchdog::new(&HealSettings {
            enabled,
            call_deadline: Duration::from_secs(10),
            slow_call_deadline: Duration::from_secs(300),
            ..Default::default()
        })
    }

    #[test]
    fn each_function_has_its_deadline_and_none_without_healing() {
        let w = watchdog(true);
        let sign = w.limit(Function::Sign.descriptor()).unwrap();
        let keygen = w.limit(Function::GenerateKeyPair.descriptor()).unwrap();
        assert_eq!((sign.after.as_secs(), sign.slow), (10, false));
        assert_eq!((keygen.after.as_secs(), keygen.slow), (300, true));
        assert_eq!(w.limit(Function::WaitForSlotEvent.descriptor()), None);
        assert_eq!(w.tick(), Duration::from_millis(250));
        assert_eq!(watchdog(false).limit(Function::Sign.descriptor()), None);
    }

    #[test]
    fn a_call_past_its_deadline_is_answered_device_error_and_its_connection_closed() {
        let w = watchdog(true);
        let (server, mut client) = UnixStream::pair().unwrap();
        let line = w.watch(3, BufReader::new(Stream::Unix(server)));
        let start = Instant::now();
        let limit = w.limit(Function::Sign.descriptor()).unwrap();
        line.lock().begin("C_Sign", start, limit);
        // Within its deadline, or held by its thread: left alone.
        assert!(w.sweep(start + Duration::from_secs(9)).is_empty());
        let held = line.lock();
        assert!(w.sweep(start + Duration::from_secs(11)).is_empty());
        drop(held);
        let gone = w.sweep(start + Duration::from_secs(11));
        assert_eq!(gone.len(), 1);
        gone[0].answer();
        assert_eq!((gone[0].connection, gone[0].function), (3, "C_Sign"));
        let mut frame = Vec::new();
        read_frame(&mut client, &mut frame, 64).unwrap();
        assert_eq!(
            codec::decode::<Response>(&frame).unwrap(),
            Response::Rv(wire(CKR_DEVICE_ERROR))
        );
        assert!(read_frame(&mut client, &mut frame, 64).is_err(), "closed");
        // The vendor's late answer is not wanted; the line is no longer watched.
        assert!(!line.lock().end());
        assert!(w.sweep(start + Duration::from_secs(60)).is_empty());
    }
}
