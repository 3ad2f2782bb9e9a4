//! Bringing the application's state back on a new server instance (a restart or a failover),
//! from what the [`Journal`] recorded (DESIGN.md, "Recovery model"):
//!
//! 1. every live session is opened again with its slot and flags;
//! 2. each slot's login is replayed with the kept PIN (a session on a slot whose login cannot
//!    be replayed stays lost: it answers CKR_SESSION_HANDLE_INVALID, so the application opens
//!    and logs in a new one, as Fabric does on a 0xB* answer);
//! 3. token objects are found again by the identifying attributes recorded when their handle
//!    was first handed out (exactly one match, else the handle is lost);
//! 4. each operation whose Init took no data yet is initialised again.
//!
//! Session objects and operations that had taken data cannot come back: their handles then
//! get the vendor library's answer for an invalid handle, and the operation's next call
//! CKR_OPERATION_NOT_INITIALIZED.

use std::time::Instant;

use cryptoki_sys::*;
use protocol::attribute::{AttrOut, AttrQuery, AttrValue, Attribute, Want};
use protocol::message::{Request, Response};
use protocol::ProtocolError;

use super::connection::Connection;
use super::journal::{Journal, LoginRecord, IDENTITY};
use super::log::{log, LogLevel};
use crate::ffi::wire;

/// The identifying attributes of a token object, or `None` for a session object (or one
/// whose attributes cannot be read): such a handle cannot survive a restart.
pub fn identity(
    conn: &mut Connection,
    session: u64,
    object: u64,
) -> Result<Option<Vec<Attribute>>, ProtocolError> {
    let query = IDENTITY
        .iter()
        .map(|&(ty, units)| AttrQuery {
            ty: wire(ty),
            want: Want::Buffer(units),
        })
        .collect();
    let response = conn.call(&Request::GetAttributeValue {
        session,
        object,
        query,
    })?;
    let Response::Attributes { rv, values } = response else {
        return Ok(None);
    };
    // Per-attribute answers are meaningful with these return values (v2.40 §5.7.5).
    if !matches!(
        rv,
        CKR_OK | CKR_ATTRIBUTE_TYPE_INVALID | CKR_ATTRIBUTE_SENSITIVE | CKR_BUFFER_TOO_SMALL
    ) {
        return Ok(None);
    }
    let attributes: Vec<Attribute> = IDENTITY
        .iter()
        .zip(values)
        .filter_map(|(&(ty, _), out)| match out {
            AttrOut::Value(value) => Some(Attribute {
                ty: wire(ty),
                value,
            }),
            _ => None,
        })
        .collect();
    let token = attributes
        .iter()
        .any(|a| a.ty == wire(CKA_TOKEN) && a.value == AttrValue::Bool(true));
    Ok(token.then_some(attributes))
}

/// Re-creates the journal's state on the server `conn` reached. Holds the journal for its
/// whole duration, so other threads wait for it instead of using half-restored handles.
/// A transport failure leaves the journal marked for another attempt on the next call.
pub fn recover(
    conn: &mut Connection,
    journal: &mut Journal,
    enabled: bool,
) -> Result<(), ProtocolError> {
    let started = Instant::now();
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
        Err(e) => {
            // Void again: the next call starts the replay over.
            journal.switch_instance([0; 16]);
            log(
                LogLevel::Warn,
                &format!("new server instance: restoring the sessions failed: {e}"),
            );
        }
    }
    result.map(|_| ())
}

fn replay(conn: &mut Connection, journal: &mut Journal) -> Result<String, ProtocolError> {
    let mut handles: Vec<u64> = journal.sessions.keys().copied().collect();
    handles.sort_unstable();
    // 1. Sessions. One whose login cannot be replayed (PINs not kept) is left lost.
    let mut reopened = 0;
    for &h in &handles {
        let s = &journal.sessions[&h];
        let (slot, flags) = (s.slot, s.flags);
        if journal.logins.get(&slot).is_some_and(|l| l.pin.is_none()) {
            continue;
        }
        match conn.call(&Request::OpenSession { slot, flags })? {
            Response::Handle(real) => {
                journal.sessions.get_mut(&h).expect("listed").real = Some(real);
                reopened += 1;
            }
            other => log(
                LogLevel::Warn,
                &format!(
                    "session {h} could not be opened again: CKR 0x{:X}",
                    other.rv()
                ),
            ),
        }
    }
    // 2. Logins, on the first reopened session of each slot.
    let logins: Vec<(u64, LoginRecord)> = journal
        .logins
        .iter()
        .map(|(s, l)| (*s, l.clone()))
        .collect();
    for (slot, login) in logins {
        let Some(session) = first_session_on(journal, slot, &handles) else {
            continue;
        };
        let pin = login.pin.clone().flatten();
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
        let rv = conn.call(&request)?.rv();
        if !matches!(rv, CKR_OK | CKR_USER_ALREADY_LOGGED_IN) {
            log(
                LogLevel::Warn,
                &format!("the login on slot {slot} could not be replayed: CKR 0x{rv:X}; its sessions are lost"),
            );
            for &h in &handles {
                let s = journal.sessions.get_mut(&h).expect("listed");
                if s.slot == slot {
                    if let Some(real) = s.real.take() {
                        conn.call(&Request::CloseSession { session: real })?;
                    }
                }
            }
            journal.logins.remove(&slot);
        }
    }
    // 3. Token objects, found by their identity on a session of their slot.
    let mut objects: Vec<(u64, u64, Vec<Attribute>)> = journal
        .objects
        .iter()
        .filter_map(|(v, o)| Some((*v, o.slot, o.identity.clone()?)))
        .collect();
    objects.sort_unstable_by_key(|o| o.0);
    let mut found = 0;
    for (object, slot, template) in objects {
        let Some(session) = first_session_on(journal, slot, &handles) else {
            continue;
        };
        let real = find_one(conn, session, template)?;
        if real.is_some() {
            found += 1;
        } else {
            log(
                LogLevel::Warn,
                &format!("object {object} was not found again on the new server"),
            );
        }
        journal.resolve_object(object, real);
    }
    // 4. Operations that took no data yet are initialised again; the others are gone.
    let mut rebuilt = 0;
    for &h in &handles {
        let ops = std::mem::take(&mut journal.sessions.get_mut(&h).expect("listed").ops);
        if journal.sessions[&h].real.is_none() {
            continue;
        }
        let mut kept = Vec::new();
        for op in ops.into_iter().filter(|o| o.fresh) {
            let mut init = op.init.clone();
            let Ok(_) = journal.to_server(&mut init) else {
                continue;
            };
            let rv = conn.call(&init)?.rv();
            if rv == CKR_OK {
                rebuilt += 1;
                kept.push(op);
            } else {
                log(
                    LogLevel::Warn,
                    &format!(
                        "{} on session {h} could not be replayed: CKR 0x{rv:X}",
                        init.function_name()
                    ),
                );
            }
        }
        journal.sessions.get_mut(&h).expect("listed").ops = kept;
    }
    Ok(format!(
        "{reopened} of {} sessions, {found} objects, {rebuilt} operations",
        handles.len()
    ))
}

/// The server handle of a reopened session on `slot`, the lowest of the shim's first.
fn first_session_on(journal: &Journal, slot: u64, sorted: &[u64]) -> Option<u64> {
    sorted
        .iter()
        .filter_map(|h| journal.sessions.get(h))
        .find(|s| s.slot == slot && s.real.is_some())
        .and_then(|s| s.real)
}

/// The one object matching `template`, or `None` when there is none or more than one.
fn find_one(
    conn: &mut Connection,
    session: u64,
    template: Vec<Attribute>,
) -> Result<Option<u64>, ProtocolError> {
    if conn
        .call(&Request::FindObjectsInit { session, template })?
        .rv()
        != CKR_OK
    {
        return Ok(None);
    }
    let found = conn.call(&Request::FindObjects {
        session,
        max_count: 2,
    })?;
    conn.call(&Request::FindObjectsFinal { session })?;
    Ok(match found {
        Response::Ulongs { rv, values, .. } if rv == CKR_OK && values.len() == 1 => Some(values[0]),
        _ => None,
    })
}
