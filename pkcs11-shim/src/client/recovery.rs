//! Bringing the application's state back on a new server instance (a restart or a failover),
//! from what the [`Journal`] recorded (DESIGN.md, "Recovery model"):
//!
//! 1. every live session is opened again with its slot and flags;
//! 2. each slot's login is replayed with the kept PIN (a session on a slot whose login cannot
//!    be replayed stays lost: it answers CKR_SESSION_HANDLE_INVALID, so the application opens
//!    and logs in a new one, as Fabric does on a 0xB* answer);
//! 3. each operation whose Init took no data yet is initialised again, its key found again by
//!    the identifying attributes recorded when its handle was first handed out (exactly one
//!    match, else the handle is lost).
//!
//! Other token objects are found again the same way when a call first names them, or adopted
//! when a search hands them out again (same identity), so the replay does not grow with the
//! number of objects the application has seen.
//!
//! Session objects and operations that had taken data cannot come back: their handles answer
//! CKR_OBJECT_HANDLE_INVALID, and the operation's next call CKR_OPERATION_NOT_INITIALIZED.
//!
//! A replay that meets the HSM down (the vendor answers that it lost its device: DESIGN.md,
//! "Healing the HSM side") stops without giving anything up ([`Stopped::Device`]): the call
//! gets the vendor's answer, and a later call replays again, on the same server instance or on
//! the one the server replaced it with, until the HSM answers.

use std::time::Instant;

use cryptoki_sys::*;
use protocol::attribute::Attribute;
use protocol::message::Identity;
use protocol::message::{Request, Response};
use protocol::shape::Outputs;
use protocol::ProtocolError;

use super::connection::Connection;
use protocol::function::OpKind;

use super::journal::Journal;
use super::journal::OpRecord;
use crate::log::{log, LogLevel};

/// Why a replay stopped before its end.
#[derive(Debug)]
pub enum Stopped {
    /// The connection failed: the next call starts over, on whatever server it reaches.
    Lost(ProtocolError),
    /// The vendor answered that it lost its device ([`lost_device`]): not now. The call gets
    /// this answer, and the application's state stays as the journal holds it.
    Device(CK_RV),
}

impl From<ProtocolError> for Stopped {
    fn from(e: ProtocolError) -> Self {
        Stopped::Lost(e)
    }
}

/// The vendor's answers, to a replay, that mean its instance lost the device, not that the
/// request was wrong (DESIGN.md, "Healing the HSM side"; PKCS#11 v2.40 section 5.1): the HSM
/// is down, or was, and the server replaces the instance. A replay names only slots and
/// tokens the application had: one not there, or not recognised, is gone for now.
pub fn lost_device(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_DEVICE_ERROR
            | CKR_DEVICE_REMOVED
            | CKR_TOKEN_NOT_PRESENT
            | CKR_TOKEN_NOT_RECOGNIZED
            | CKR_SLOT_ID_INVALID
            | CKR_CRYPTOKI_NOT_INITIALIZED
    )
}

/// One call of a replay: the vendor's answer, or [`Stopped::Device`] when it lost its device.
fn vendor(conn: &mut Connection, request: &Request) -> Result<Response, Stopped> {
    let response = conn.call(request)?;
    match response.rv() {
        rv if lost_device(rv) => Err(Stopped::Device(rv)),
        _ => Ok(response),
    }
}

/// The identity of each of `objects` (server handles) handed out earlier without one (the
/// server sends it with the answer that hands an object out, once per application: another
/// thread may have got it). `None` for a session object: such a handle cannot survive a
/// restart.
pub fn identify(
    conn: &mut Connection,
    session: u64,
    objects: Vec<u64>,
) -> Result<Vec<Identity>, ProtocolError> {
    conn.call(&Request::IdentifyObjects { session, objects })?;
    Ok(conn.take_identities())
}

/// Re-creates the journal's state on the server `conn` reached. Holds the journal for its
/// whole duration, so other threads wait for it instead of using half-restored handles.
/// A transport failure leaves the journal marked for another attempt on the next call, on
/// whatever server it reaches; a lost device, for another attempt on this instance or its
/// replacement, the sessions this attempt opened closed again.
pub fn recover(conn: &mut Connection, journal: &mut Journal, enabled: bool) -> Result<(), Stopped> {
    let started = Instant::now();
    let again = journal.voided();
    journal.switch_instance(conn.instance());
    if !enabled {
        log(
            LogLevel::Warn,
            "new server instance: recovery is off, this application's sessions are lost",
        );
        return Ok(());
    }
    let result = replay(conn, journal);
    match &result {
        Ok(summary) => log(
            LogLevel::Warn,
            &format!(
                "new server instance: {summary} restored in {} ms",
                started.elapsed().as_millis()
            ),
        ),
        Err(Stopped::Lost(e)) => {
            // Void again: the next call starts the replay over.
            journal.switch_instance([0; 16]);
            log(
                LogLevel::Warn,
                &format!("new server instance: restoring the sessions failed: {e}"),
            );
        }
        Err(Stopped::Device(rv)) => {
            close_reopened(conn, journal);
            journal.void();
            // Once per outage, not once per call.
            log(
                if again { LogLevel::Debug } else { LogLevel::Warn },
                &format!(
                    "the HSM does not answer (CKR 0x{rv:X}): the sessions are restored at a later call"
                ),
            );
        }
    }
    result.map(|_| ())
}

/// Closes the sessions a replay stopped by a lost device had opened, so that the next replay
/// on the same instance leaves none behind (best effort: the device may refuse).
fn close_reopened(conn: &mut Connection, journal: &mut Journal) {
    for h in journal.session_handles() {
        let real = journal.session_mut(h).and_then(|s| s.real.take());
        if let Some(session) = real {
            if conn.call(&Request::CloseSession { session }).is_err() {
                return;
            }
        }
    }
}

fn replay(conn: &mut Connection, journal: &mut Journal) -> Result<String, Stopped> {
    let handles = journal.session_handles();
    // 1. Sessions.
    let mut reopened = 0;
    for &h in &handles {
        if open_again(conn, journal, h)? {
            reopened += 1;
        }
    }
    // 2. Logins, on the first reopened session of each slot.
    for slot in journal.login_slots() {
        if let Some(session) = first_session_on(journal, slot, &handles) {
            login_again(conn, journal, slot, session)?;
        }
    }
    // 3. Operations that took no data yet are initialised again (their keys found again
    //    first); the others are gone. Other token objects are found again when first used or
    //    handed out again (see `find_pending` and `Journal::after`).
    let mut rebuilt = 0;
    for &h in &handles {
        rebuilt += init_again(conn, journal, h)?;
    }
    Ok(format!(
        "{reopened} of {} sessions, {rebuilt} operations",
        handles.len()
    ))
}

/// One session the server no longer has although its instance did not change (it outlived
/// the server's resume grace, or the vendor library closed it): opened again, logged in
/// again and its fresh operations re-initialised. Returns whether it is back. Stopped by a
/// lost device, it stays as it was, to be opened again at a later call.
pub fn reopen_session(
    conn: &mut Connection,
    journal: &mut Journal,
    session: u64,
) -> Result<bool, Stopped> {
    let Some(old) = journal.session_mut(session).map(|s| s.real.take()) else {
        return Ok(false);
    };
    // Its session objects went with it; their numbers may be given to new objects.
    journal.objects_mut().lose_owned(session);
    match reopen(conn, journal, session) {
        Err(Stopped::Device(rv)) => {
            let s = journal.session_mut(session).expect("listed");
            if let Some(new) = std::mem::replace(&mut s.real, old) {
                let _ = conn.call(&Request::CloseSession { session: new });
            }
            Err(Stopped::Device(rv))
        }
        other => other,
    }
}

fn reopen(conn: &mut Connection, journal: &mut Journal, session: u64) -> Result<bool, Stopped> {
    if !open_again(conn, journal, session)? {
        return Ok(false);
    }
    let s = journal.session(session).expect("just opened");
    let (slot, real) = (s.slot, s.real.expect("just opened"));
    if journal.login(slot).is_some() && !login_again(conn, journal, slot, real)? {
        return Ok(false);
    }
    init_again(conn, journal, session)?;
    log(
        LogLevel::Warn,
        &format!("session {session} was gone from the server: opened again"),
    );
    Ok(true)
}

/// Opens session `h` again with its slot and flags; one whose login cannot be replayed (PINs
/// not kept) is left lost.
fn open_again(conn: &mut Connection, journal: &mut Journal, h: u64) -> Result<bool, Stopped> {
    let s = journal.session(h).expect("listed");
    let (slot, flags) = (s.slot, s.flags);
    if journal.login(slot).is_some_and(|l| l.pin.is_none()) {
        return Ok(false);
    }
    match vendor(
        conn,
        &Request::OpenSession {
            slot,
            flags,
            outputs: Outputs::ALL,
        },
    )? {
        Response::Handle(real) => {
            journal.session_mut(h).expect("listed").real = Some(real);
            Ok(true)
        }
        other => {
            log(
                LogLevel::Warn,
                &format!(
                    "session {h} could not be opened again: CKR 0x{:X}",
                    other.rv()
                ),
            );
            Ok(false)
        }
    }
}

/// Replays the login of `slot` on server session `session`. If the token refuses it (PIN
/// changed elsewhere...), every session of the slot is closed and lost, and the login
/// forgotten: the application's next calls answer CKR_SESSION_HANDLE_INVALID.
fn login_again(
    conn: &mut Connection,
    journal: &mut Journal,
    slot: u64,
    session: u64,
) -> Result<bool, Stopped> {
    let Some(login) = journal.login(slot).cloned() else {
        return Ok(true);
    };
    let pin = login.pin.flatten();
    let request = match login.username {
        Some(username) => Request::LoginUser {
            session,
            user_type: login.user_type,
            pin,
            username,
        },
        None => Request::Login {
            session,
            user_type: login.user_type,
            pin,
        },
    };
    let rv = vendor(conn, &request)?.rv();
    if matches!(rv, CKR_OK | CKR_USER_ALREADY_LOGGED_IN) {
        journal.objects_mut().recheck(slot);
        return Ok(true);
    }
    log(
        LogLevel::Warn,
        &format!(
            "the login on slot {slot} could not be replayed: CKR 0x{rv:X}; its sessions are lost"
        ),
    );
    for v in journal.sessions_on(slot) {
        let s = journal.session_mut(v).expect("listed");
        if let Some(real) = s.real.take() {
            conn.call(&Request::CloseSession { session: real })?;
        }
    }
    journal.forget_login(slot);
    Ok(false)
}

/// Initialises again the operations of session `h` that took no data yet; the others are
/// forgotten (gone with the old session). Returns how many were rebuilt.
fn init_again(conn: &mut Connection, journal: &mut Journal, h: u64) -> Result<usize, Stopped> {
    let s = journal.session_mut(h).expect("listed");
    let ops = std::mem::take(&mut s.ops);
    let Some(session) = s.real else {
        return Ok(0);
    };
    let mut kept = Vec::new();
    for op in ops {
        if op.ended_early() {
            // Its results are the shim's: the new server gets the operation back only if
            // the application does something else with the session (`restore_ended`).
            kept.push(op);
            continue;
        }
        if !op.fresh {
            continue;
        }
        if replay_init(conn, journal, h, session, &op.init)? {
            kept.push(op);
        }
    }
    let rebuilt = kept.len();
    journal.session_mut(h).expect("listed").ops = kept;
    Ok(rebuilt)
}

/// Gives the vendor back the operations of session `h` (the shim's handle) it ended ahead of
/// the application: a completed size query gets its Init replayed (it had taken no data: a
/// single-part size query leaves nothing behind); a search run to its end gets its Init and
/// the same C_FindObjects replayed, which leaves the vendor's search where the application's
/// is (its handles are still served by the shim). The vendor then answers the application's
/// next call on the session as it would have (DESIGN.md, "Two-call functions"). A search to
/// give back ([`crate::client::ahead::Search::give_back`]) is ended on the vendor if it was
/// not, and replayed up to the handles the application has had: the vendor's from then on.
/// One the vendor refuses now is gone, as it would be on a new server.
pub fn restore_ended(conn: &mut Connection, journal: &mut Journal, h: u64) -> Result<(), Stopped> {
    let Some(s) = journal.session(h) else {
        return Ok(());
    };
    let Some(session) = s.real else {
        return Ok(());
    };
    let ended: Vec<(OpKind, Request, Restore)> = s
        .ops
        .iter()
        .filter(|o| o.ended_early())
        .map(|o| (o.kind, o.init.clone(), Restore::of(o)))
        .collect();
    for (kind, init, back) in ended {
        let s = journal.session_mut(h).expect("listed");
        let (end_first, fetch, give_back) = match back {
            Restore::InPlace => {
                for op in s.ops.iter_mut().filter(|o| o.kind == kind) {
                    op.search = None;
                }
                continue;
            }
            Restore::Init => (false, 0, false),
            Restore::Search { fetch } => (false, fetch, false),
            Restore::Handover { end_first, fetch } => (end_first, fetch, true),
        };
        if end_first {
            vendor(conn, &Request::FindObjectsFinal { session })?;
        }
        let replayed = replay_init(conn, journal, h, session, &init)?;
        if replayed && fetch > 0 {
            let find = Request::FindObjects {
                session,
                max_count: fetch,
                outputs: Outputs::ALL,
            };
            vendor(conn, &find)?;
        }
        let s = journal.session_mut(h).expect("listed");
        if replayed {
            for op in s.ops.iter_mut().filter(|o| o.kind == kind) {
                op.completed = None;
                if let Some(f) = op.search.as_mut() {
                    f.ended = None;
                }
                if give_back {
                    op.search = None;
                }
            }
        } else {
            s.ops.retain(|o| o.kind != kind);
        }
    }
    Ok(())
}

/// What giving an operation back to the vendor takes ([`restore_ended`]).
enum Restore {
    /// A completed size query: its Init replayed.
    Init,
    /// A search run to its end: its Init and the prefetch's C_FindObjects replayed; the shim
    /// still serves the handles it holds.
    Search { fetch: u64 },
    /// A search given back: ended first if the vendor's still goes on, its Init and as many
    /// handles as the application has had replayed; the vendor's from then on.
    Handover { end_first: bool, fetch: u64 },
    /// A search given back whose vendor search is where the application's is (it goes on,
    /// and the shim holds no handle): the vendor's from now on, nothing to send.
    InPlace,
}

impl Restore {
    fn of(op: &OpRecord) -> Self {
        match &op.search {
            None => Restore::Init,
            Some(f) if !f.give_back => Restore::Search { fetch: f.asked },
            Some(f) if f.ended.is_none() && f.found.is_empty() => Restore::InPlace,
            Some(f) => Restore::Handover {
                end_first: f.ended.is_none(),
                fetch: f.served,
            },
        }
    }
}

/// Replays `init` (an Init the journal recorded, with the shim's handles) on server session
/// `session` of the shim's session `h`: the objects it names found first when the server had
/// them waiting, and again when the vendor no longer knows them. Whether the vendor accepted
/// it (a warning is logged when not).
fn replay_init(
    conn: &mut Connection,
    journal: &mut Journal,
    h: u64,
    session: u64,
    init: &Request,
) -> Result<bool, Stopped> {
    let request = replayable(init);
    let pending = journal.pending_in(&request);
    find_pending(conn, journal, session, pending)?;
    let rv = match journal.to_server(&request) {
        Ok(sent) => {
            let rv = vendor(conn, &sent)?.rv();
            let objects = request.object_handles();
            if is_invalid_handle(rv) && find_again(conn, journal, session, &objects)? {
                match journal.to_server(&request) {
                    Ok(sent) => vendor(conn, &sent)?.rv(),
                    Err(rv) => rv,
                }
            } else {
                rv
            }
        }
        Err(rv) => rv,
    };
    if rv == CKR_OK {
        return Ok(true);
    }
    log(
        LogLevel::Warn,
        &format!(
            "{} on session {h} could not be replayed: CKR 0x{rv:X}",
            init.descriptor().name
        ),
    );
    Ok(false)
}

/// An Init as it is replayed: a search without a prefetch (the replay wants the vendor's
/// search started, nothing more).
fn replayable(init: &Request) -> Request {
    let mut init = init.clone();
    if let Request::FindObjectsInit { prefetch, .. } = &mut init {
        *prefetch = 0;
    }
    init
}

/// Finds again, on server session `session`, the objects a request names that were left
/// waiting after a restart (their token had no open session then). One not found is lost.
pub fn find_pending(
    conn: &mut Connection,
    journal: &mut Journal,
    session: u64,
    pending: Vec<(u64, Vec<Attribute>)>,
) -> Result<(), Stopped> {
    for (object, identity) in pending {
        match find_one(conn, session, identity)? {
            Ok(Some(real)) => journal.objects_mut().resolve(object, Some(real)),
            // Not now: tried again at the next use.
            Err(_) => {}
            Ok(None) => {
                log(
                    LogLevel::Warn,
                    &format!("object {object} was not found again on the new server"),
                );
                journal.objects_mut().lose(object);
            }
        }
    }
    Ok(())
}

/// The return values of a vendor library that no longer knows an object handle.
pub fn is_invalid_handle(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_OBJECT_HANDLE_INVALID
            | CKR_KEY_HANDLE_INVALID
            | CKR_WRAPPING_KEY_HANDLE_INVALID
            | CKR_UNWRAPPING_KEY_HANDLE_INVALID
    )
}

/// Finds the token objects behind the shim's handles `objects` again by their identity, on
/// server session `session`, when the vendor library may have renumbered them after a login
/// the shim replayed (SoftHSM2 gives private objects new handles after a logout, which a
/// server dropping the application's sessions brings about). Returns whether a handle
/// changed.
pub fn find_again(
    conn: &mut Connection,
    journal: &mut Journal,
    session: u64,
    objects: &[Option<u64>],
) -> Result<bool, Stopped> {
    let mut changed = false;
    for v in objects.iter().flatten() {
        let Some(record) = journal.objects().get(*v).filter(|o| o.recheck) else {
            continue;
        };
        let (Some(identity), old) = (record.identity.clone(), record.real) else {
            continue;
        };
        if let Ok(Some(real)) = find_one(conn, session, identity)? {
            if Some(real) != old {
                journal.objects_mut().resolve(*v, Some(real));
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// The server handle of a reopened session on `slot`, the lowest of the shim's first.
fn first_session_on(journal: &Journal, slot: u64, sorted: &[u64]) -> Option<u64> {
    sorted
        .iter()
        .filter_map(|h| journal.session(*h))
        .find(|s| s.slot == slot && s.real.is_some())
        .and_then(|s| s.real)
}

/// The one object matching `template`, or `None` when there is none or more than one.
/// `Err(rv)` inside when the search could not even start (the application has a search
/// going on that session: CKR_OPERATION_ACTIVE).
fn find_one(
    conn: &mut Connection,
    session: u64,
    template: Vec<Attribute>,
) -> Result<Result<Option<u64>, CK_RV>, Stopped> {
    let rv = vendor(
        conn,
        &Request::FindObjectsInit {
            session,
            template: template.into(),
            prefetch: 0,
        },
    )?
    .rv();
    if rv != CKR_OK {
        return Ok(Err(rv));
    }
    let found = vendor(
        conn,
        &Request::FindObjects {
            session,
            max_count: 2,
            outputs: Outputs::ALL,
        },
    )?;
    conn.call(&Request::FindObjectsFinal { session })?;
    Ok(Ok(match found {
        Response::Ulongs { rv, values, .. } if rv == CKR_OK && values.len() == 1 => Some(values[0]),
        _ => None,
    }))
}
