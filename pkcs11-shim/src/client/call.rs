//! One call's way through the shim (DESIGN.md, "Recovery model", "Two-call functions"):
//! answered ahead when it can be, else translated to the server's handles on a connection
//! (the journal replayed first on a new server instance), sent, mended when the vendor lost
//! the session or renumbered an object, sent again after a lost answer when that cannot do
//! anything twice, and its answer recorded in the journal with the shim's handles.

use cryptoki_sys::*;
use protocol::message::{Request, Response};

use super::ahead::{self, Served};
use super::connection::Connection;
use super::journal::{self, InstanceId, Journal};
use super::recovery::{self, Stopped};
use super::Client;
use crate::ffi::Rv;
use crate::log::warn;

/// Sends of one request at most: the first, and resends after lost answers.
const MAX_SENDS: usize = 3;

/// Requests not executed (a leaving server instance retired them, or they could not be sent)
/// that one call sends again at most (an instance replaced again and again as the HSM keeps
/// breaking it).
const MAX_RETIRED: usize = 8;

/// How many handles C_FindObjectsInit fetches ahead: Fabric asks for one, listing tools for
/// a few at a time.
const SEARCH_AHEAD: u64 = 32;

impl Client {
    /// The answer to a call whose answer was lost and that is not sent again.
    fn lost_answer(&self) -> CK_RV {
        if self.config().recovery {
            CKR_FUNCTION_FAILED
        } else {
            CKR_DEVICE_ERROR
        }
    }

    /// One call, with the shim's handles in the request and in the answer.
    ///
    /// When the connection reaches a new server instance, the journal is replayed there
    /// first (`recovery`). When an answer is lost, the request is sent again only if that
    /// cannot do anything twice: to the same server (resumed) only if it changes nothing at
    /// all; to a new instance (restart, failover) only if it does not change the token (the
    /// first send may have done so before the server went away). Otherwise the call answers
    /// CKR_FUNCTION_FAILED (CKR_DEVICE_ERROR with recovery off). An answer lost a second
    /// time answers CKR_DEVICE_ERROR: the call may be what kills its worker (DESIGN.md,
    /// "Containment"), so it is sent at most twice.
    pub fn call(&self, request: Request) -> Rv<Response> {
        self.call_with(request, true)
    }

    pub(super) fn call_with(&self, request: Request, wait: bool) -> Rv<Response> {
        crate::trace::request(&request);
        let answer = self.call_traced(request, wait);
        if let Ok(response) = &answer {
            crate::trace::answer(response);
        }
        answer
    }

    fn call_traced(&self, mut request: Request, wait: bool) -> Rv<Response> {
        // The follow-up of a size query the server completed, and the calls of a search it ran
        // ahead, cost no round trip (DESIGN.md, "Two-call functions").
        let mut prefix = Vec::new();
        let session = request.session();
        let ahead = {
            let j = self.journal.read();
            let ahead = j.answers_ahead(session, &request);
            if !ahead {
                self.ask_ahead(&mut request, &j);
            }
            ahead
        };
        if ahead {
            let mut j = self.journal.write();
            if let Some(answer) = j.serve_completed(&request) {
                return Ok(answer);
            }
            if let Some(answer) = j.serve_attributes(&request) {
                return Ok(answer);
            }
            match j.serve_search(&mut request) {
                Some(Served::All(answer)) => return Ok(answer),
                Some(Served::Part(handles)) => prefix = handles,
                None => self.ask_ahead(&mut request, &j),
            }
            // Not served: the vendor gets its operation back first (`prepare`).
        }
        let mut lost_on: Option<InstanceId> = None;
        let mut mended = Mended::default();
        let mut sends = 0;
        let mut lost = 0;
        let mut retired = 0;
        while sends < MAX_SENDS {
            let mut conn = self.pool.connection(wait, &self.journal)?;
            if let Some(lost) = lost_on {
                let resend = if conn.instance() == lost {
                    request.descriptor().repeatable
                } else {
                    self.config().recovery && !request.descriptor().changes_token
                };
                if !resend {
                    self.pool.park(conn);
                    return Err(self.lost_answer());
                }
            }
            // The request stays in the application's form, with the shim's handles; each send
            // carries a copy with the handles of the server it goes to.
            let sent = match self.prepare(&mut conn, &request) {
                Prepared::Ready(sent) => sent,
                Prepared::Again => continue,
                Prepared::Failed => {
                    sends += 1;
                    continue;
                }
                Prepared::Refused(rv) => {
                    self.pool.park(conn);
                    return Err(rv);
                }
                Prepared::Down(rv) => {
                    self.pool.park(conn);
                    self.journal.write().refused(&request, rv);
                    return Err(rv);
                }
            };
            if matches!(
                request,
                Request::CloseSession { .. } | Request::CloseAllSessions { .. }
            ) {
                self.journal.write().closing(&request);
            }
            sends += 1;
            match conn.call(&sent) {
                Ok(response) => {
                    match self.mend(&mut conn, &request, &sent, &response, &mut mended) {
                        Ok(true) => {
                            self.pool.park(conn);
                            continue;
                        }
                        Ok(false) => {}
                        Err(rv) => {
                            self.pool.park(conn);
                            self.journal.write().refused(&request, rv);
                            return Err(rv);
                        }
                    }
                    match self.record(&mut conn, &request, &sent, response) {
                        Some(response) => {
                            self.pool.park(conn);
                            return Ok(ahead::after_prefix(std::mem::take(&mut prefix), response));
                        }
                        // Answered by a server the application has left meanwhile (another
                        // thread moved it to a new instance): its handles mean nothing there.
                        // A creation did happen on the token but cannot be mapped: failed, as
                        // a lost answer. Anything else is sent again to the new server.
                        None if request.descriptor().changes_token => {
                            warn(&format!(
                                "{}: answered by a server instance the application left meanwhile; what it made cannot be mapped",
                                request.descriptor().name
                            ));
                            return Err(self.lost_answer());
                        }
                        None => lost_on = Some(conn.instance()),
                    }
                }
                // The server instance is leaving and did not execute the request (it said
                // so, or the request could not be sent): sent again on a new connection (a
                // new instance, or another replica), whatever the function. Not a send:
                // nothing happened.
                Err(e) if e.not_executed() && retired < MAX_RETIRED => {
                    retired += 1;
                    sends -= 1;
                    let leaving = conn.instance();
                    self.pool.retain_idle(|c| c.instance() != leaving);
                }
                Err(e) => {
                    warn(&format!("{}: {e}", request.descriptor().name));
                    // A call whose answer is lost twice may be what kills the server's worker
                    // (a vendor library that crashes on it): it is not sent a third time.
                    lost += 1;
                    if lost >= 2 {
                        return Err(CKR_DEVICE_ERROR);
                    }
                    // The other idle connections to that server are suspect too (it may be
                    // stopping): the next attempt opens a new one, which tells whether the
                    // same server is still there.
                    let lost = conn.instance();
                    self.pool.retain_idle(|c| c.instance() != lost);
                    lost_on = Some(lost);
                }
            }
        }
        Err(self.lost_answer())
    }

    /// Asks the server to answer `request`'s follow-ups ahead, where the settings allow: a
    /// size query completed, a search run ahead.
    fn ask_ahead(&self, request: &mut Request, j: &Journal) {
        if self.config().complete_size_queries {
            j.ask_completion(request);
        }
        if self.config().prefetch_searches {
            j.ask_prefetch(request, SEARCH_AHEAD);
        }
    }

    /// Puts the server's handles into `request` for the server `conn` reached: at once on the
    /// usual path (a read lock: threads translate side by side); under the write lock when
    /// the journal must first be replayed on a new server instance, or objects the request
    /// names found again there.
    fn prepare(&self, conn: &mut Connection, request: &Request) -> Prepared {
        let moved = |j: &Journal| uses_handles(request) && j.instance() != conn.instance();
        // Another call on a session whose size query was completed: the vendor gets the
        // operation back first (closing the session needs nothing back).
        let restore = |j: &Journal| match request {
            Request::CloseSession { .. } => None,
            r => r.session().filter(|s| j.vendor_ended_early(*s)),
        };
        {
            let j = self.journal.read();
            if !moved(&j) && j.pending_in(request).is_empty() && restore(&j).is_none() {
                match j.to_server(request) {
                    Ok(s) => return Prepared::Ready(s),
                    // Closing a lost session releases its handle, below.
                    Err(_) if matches!(request, Request::CloseSession { .. }) => {}
                    Err(rv) => return Prepared::Refused(rv),
                }
            }
        }
        let mut j = self.journal.write();
        if moved(&j) {
            if conn.journal_epoch < j.epoch() {
                // Opened before the last switch, to a server the application left.
                return Prepared::Again;
            }
            if let Err(stopped) = recovery::recover(conn, &mut j, self.config().recovery) {
                return stopped.into();
            }
            let instance = conn.instance();
            self.pool.retain_idle(|c| c.instance() == instance);
        }
        if let Some(session) = restore(&j) {
            if let Err(stopped) = recovery::restore_ended(conn, &mut j, session) {
                return stopped.into();
            }
        }
        let pending = j.pending_in(request);
        let session = request.session().and_then(|s| j.session_real(s));
        if let (false, Some(session)) = (pending.is_empty(), session) {
            if let Err(stopped) = recovery::find_pending(conn, &mut j, session, pending) {
                return stopped.into();
            }
        }
        match j.to_server(request) {
            Ok(s) => Prepared::Ready(s),
            Err(rv) => {
                if let Request::CloseSession { session } = request {
                    j.forget_session(*session);
                }
                Prepared::Refused(rv)
            }
        }
    }

    /// Mends what the vendor's answer shows the vendor lost, once each per call: the session
    /// (`session_gone`), objects renumbered (`objects_renumbered`). `Ok(true)`: mended, the
    /// request is sent again (it did nothing). `Err(rv)`: the HSM answered `rv` to the repair
    /// (it is down): the call gets that answer, and the repair is tried again at a later call.
    fn mend(
        &self,
        conn: &mut Connection,
        request: &Request,
        sent: &Request,
        response: &Response,
        mended: &mut Mended,
    ) -> Result<bool, CK_RV> {
        if !mended.session && self.session_gone(conn, request, sent, response)? {
            mended.session = true;
            return Ok(true);
        }
        if !mended.objects && self.objects_renumbered(conn, request, sent, response)? {
            mended.objects = true;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether the server answered CKR_SESSION_HANDLE_INVALID for a session the application
    /// still holds, on the same server instance (the session outlived the resume grace, or the
    /// vendor library closed it), and the session could be opened again: the call is then
    /// sent again (it did nothing). With recovery off, the answer stands.
    fn session_gone(
        &self,
        conn: &mut Connection,
        request: &Request,
        sent: &Request,
        response: &Response,
    ) -> Result<bool, CK_RV> {
        if !self.config().recovery
            || response.rv() != CKR_SESSION_HANDLE_INVALID
            || matches!(request, Request::CloseSession { .. })
        {
            return Ok(false);
        }
        let (Some(session), Some(sent)) = (request.session(), sent.session()) else {
            return Ok(false);
        };
        let mut j = self.journal.write();
        let still_ours = j
            .session(session)
            .is_some_and(|s| s.real == Some(sent) && !s.closing);
        if !still_ours || j.instance() != conn.instance() {
            return Ok(false);
        }
        repair(recovery::reopen_session(conn, &mut j, session))
    }

    /// Whether the server answered that an object handle is invalid while the object, found
    /// again by its identity, has another handle now on the same server (the vendor library
    /// renumbered it, as SoftHSM2 does for private objects after a logout): the call is then
    /// sent again (it did nothing).
    fn objects_renumbered(
        &self,
        conn: &mut Connection,
        request: &Request,
        sent: &Request,
        response: &Response,
    ) -> Result<bool, CK_RV> {
        if !self.config().recovery || !recovery::is_invalid_handle(response.rv()) {
            return Ok(false);
        }
        let Some(session) = sent.session() else {
            return Ok(false);
        };
        let objects = request.object_handles();
        let mut j = self.journal.write();
        if j.instance() != conn.instance() {
            return Ok(false);
        }
        repair(recovery::find_again(conn, &mut j, session, &objects))
    }

    /// Records the answer in the journal and gives it the shim's handles. With recovery on,
    /// each token object handed out for the first time is recorded with its identity, which
    /// the server sent with the answer (or, when another thread got it, is asked for now,
    /// while its server is there to answer). `None` when the journal has moved to another
    /// server instance since the request was sent, unless the answer is one of a call that
    /// changed the token and carries no handle (its record holds nothing of the old server).
    fn record(
        &self,
        conn: &mut Connection,
        request: &Request,
        sent: &Request,
        mut response: Response,
    ) -> Option<Response> {
        if !journal::records(request) {
            return Some(response);
        }
        let mut identities = conn.take_identities();
        if self.config().recovery {
            let new = self.journal.read().new_objects(request, &mut response);
            let missing: Vec<u64> = new
                .into_iter()
                .filter(|h| !identities.iter().any(|i| i.object == *h))
                .collect();
            if let (false, Some(session)) = (missing.is_empty(), sent.session()) {
                identities.extend(recovery::identify(conn, session, missing).unwrap_or_default());
            }
        }
        let keep_pin = self.config().recovery && self.config().keep_pin;
        let mut j = self.journal.write();
        let handle_free = request.descriptor().changes_token
            && protocol::objects::handed_out(request, &mut response).is_empty();
        if j.instance() != conn.instance() && !handle_free {
            return None;
        }
        Some(j.after(request, response, keep_pin, identities))
    }
}

/// The repairs one call already made ([`Client::mend`]).
#[derive(Default)]
struct Mended {
    session: bool,
    objects: bool,
}

/// A repair's outcome for the call: done or not (a failed connection: the vendor's answer
/// stands), or the HSM's answer that it is down.
fn repair(outcome: Result<bool, Stopped>) -> Result<bool, CK_RV> {
    match outcome {
        Ok(done) => Ok(done),
        Err(Stopped::Lost(_)) => Ok(false),
        Err(Stopped::Device(rv)) => Err(rv),
    }
}

/// How [`Client::prepare`] left a request.
enum Prepared {
    /// Translated for the connection's server.
    Ready(Request),
    /// The connection belongs to a server the application left: take another.
    Again,
    /// The connection failed during a replay: another attempt.
    Failed,
    /// Answered here (a lost session or object).
    Refused(CK_RV),
    /// Answered here with the HSM's answer to the replay: it is down.
    Down(CK_RV),
}

impl From<Stopped> for Prepared {
    /// A replay that stopped: another attempt after a failed connection; the vendor's answer
    /// when the HSM is down (the journal keeps the application's state for a later call).
    fn from(stopped: Stopped) -> Self {
        match stopped {
            Stopped::Lost(_) => Prepared::Failed,
            Stopped::Device(rv) => Prepared::Down(rv),
        }
    }
}

/// Whether a request involves the journal's handles. Calls without a session (library, slot
/// and token information, C_Finalize) hold none: a replay on a new server waits for the first
/// call that needs it.
fn uses_handles(request: &Request) -> bool {
    request.session().is_some()
        || matches!(
            request,
            Request::OpenSession { .. } | Request::CloseAllSessions { .. }
        )
}
