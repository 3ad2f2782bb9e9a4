//! What the shim remembers of the application's state on the server, so that it survives a
//! server restart (DESIGN.md, "Recovery model"): the application's sessions (the shim's own,
//! stable handles, each mapped to the current server's), the object handles it was given
//! ([`Objects`]), its logins, the operation each session has initialised, and the answers the
//! server gave ahead that belong to those operations ([`super::ahead`]).
//!
//! This module is bookkeeping only, no I/O: [`super::recovery`] replays it on a new server.

use std::collections::{HashMap, VecDeque};

use cryptoki_sys::*;
use protocol::attribute::{completable, Attribute};
use protocol::function::{OpKind, Step};
use protocol::message::{Identity, Pin, Request, Response};
use protocol::objects::Handout;
use protocol::shape::{Bytes, Out};

use super::ahead::{self, AttributesAhead, Completed, FollowUp, Search, Served};
use super::handles::{self, free_handle, Objects};
use crate::ffi::{wire, Rv};

pub use protocol::handshake::InstanceId;

/// How many instances the application left are remembered (each was its instance once).
const LEFT_KEPT: usize = 16;

/// No instance: the journal's state is on none.
const NONE: InstanceId = [0; 16];

/// Whether the answer to `request` changes what the journal holds or carries object handles;
/// the answers to other calls (queries, random, single-shot message calls) pass untouched.
pub fn records(request: &Request) -> bool {
    let d = request.descriptor();
    d.step != Step::None
        || d.recorded
        || d.hands_out
        || matches!(request, Request::GetAttributeValue { complete: true, .. })
}

/// An operation a session has initialised: its Init (with the shim's handles), and whether it
/// has taken no data yet, so that replaying the Init rebuilds it exactly.
#[derive(Debug, Clone)]
pub struct OpRecord {
    pub kind: OpKind,
    pub init: Request,
    pub fresh: bool,
    /// The result of a completed size query: the vendor's operation has ended, the
    /// application's has not.
    pub completed: Option<Completed>,
    /// A search the server ran ahead (C_FindObjectsInit with a prefetch).
    pub search: Option<Search>,
}

impl OpRecord {
    /// Whether the vendor ended it ahead of the application (a completed size query, a
    /// search run to its end): the vendor must get it back before it answers another call
    /// on the session.
    pub fn ended_early(&self) -> bool {
        self.completed.is_some()
            || (self.search.as_ref()).is_some_and(|f| f.ended.is_some() || f.give_back)
    }
}

/// One application session.
#[derive(Debug)]
pub struct SessionRecord {
    pub slot: u64,
    pub flags: u64,
    /// The current server's handle; `None` when the session could not be brought back.
    pub real: Option<u64>,
    pub ops: Vec<OpRecord>,
    /// The application is closing it (C_CloseSession or C_CloseAllSessions sent): another
    /// thread's CKR_SESSION_HANDLE_INVALID for it is then the answer, not a session to mend.
    pub closing: bool,
}

/// An application's login on a slot (PKCS#11 logins are per application and token).
#[derive(Debug, Clone)]
pub struct LoginRecord {
    pub user_type: u64,
    /// `None` when PINs are not kept (then the login cannot be replayed).
    pub pin: Option<Pin>,
    /// C_LoginUser's user name (v3.0 §5.6.10).
    pub username: Option<Bytes>,
}

/// The application's state on the server, as the shim knows it.
#[derive(Debug)]
pub struct Journal {
    /// The server instance the `real` handles belong to.
    instance: InstanceId,
    sessions: HashMap<u64, SessionRecord>,
    objects: Objects,
    logins: HashMap<u64, LoginRecord>,
    /// Counts instance switches: a connection opened before the latest one, to another
    /// instance, belongs to a server the application has left.
    epoch: u64,
    /// The instances the application left, latest last: it never goes back to one, so
    /// that it cannot move back and forth between replicas (DESIGN.md, "Shim semantics").
    left: VecDeque<InstanceId>,
    /// The instance a replay met a lost device on ([`Journal::void`]): the application is
    /// still on it, its state not restored there yet.
    voided_from: Option<InstanceId>,
    /// The counter of the shim's own session numbers ([`free_handle`]).
    next_own_session: u64,
    attributes_ahead: AttributesAhead,
}

impl Journal {
    pub fn new(instance: InstanceId) -> Self {
        Self {
            instance,
            sessions: HashMap::new(),
            objects: Objects::new(),
            logins: HashMap::new(),
            epoch: 0,
            left: VecDeque::new(),
            voided_from: None,
            next_own_session: handles::own_numbers(),
            attributes_ahead: AttributesAhead::default(),
        }
    }

    /// The server instance the journal's server handles belong to.
    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    /// How many times the application moved to another instance.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the application was on `instance` once and left it.
    pub fn has_left(&self, instance: &InstanceId) -> bool {
        self.left.contains(instance)
    }

    /// The session `session` (the shim's handle).
    pub fn session(&self, session: u64) -> Option<&SessionRecord> {
        self.sessions.get(&session)
    }

    /// [`Journal::session`], to change (recovery points it at a new server's session).
    pub fn session_mut(&mut self, session: u64) -> Option<&mut SessionRecord> {
        self.sessions.get_mut(&session)
    }

    /// The shim's session handles, lowest first.
    pub fn session_handles(&self) -> Vec<u64> {
        let mut handles: Vec<u64> = self.sessions.keys().copied().collect();
        handles.sort_unstable();
        handles
    }

    /// The shim's sessions on `slot`.
    pub fn sessions_on(&self, slot: u64) -> Vec<u64> {
        let on_slot = self.sessions.iter().filter(|(_, s)| s.slot == slot);
        on_slot.map(|(v, _)| *v).collect()
    }

    /// The slot of one of the shim's sessions.
    pub fn session_slot(&self, session: u64) -> Option<u64> {
        self.sessions.get(&session).map(|s| s.slot)
    }

    /// The current server's handle of one of the shim's sessions.
    pub fn session_real(&self, session: u64) -> Option<u64> {
        self.sessions.get(&session).and_then(|s| s.real)
    }

    /// The application's login on `slot`.
    pub fn login(&self, slot: u64) -> Option<&LoginRecord> {
        self.logins.get(&slot)
    }

    /// The slots the application is logged in to.
    pub fn login_slots(&self) -> Vec<u64> {
        self.logins.keys().copied().collect()
    }

    /// A login that could not be replayed: forgotten with its sessions.
    pub fn forget_login(&mut self, slot: u64) {
        self.logins.remove(&slot);
    }

    /// The object handles handed to the application.
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// [`Journal::objects`], to change (recovery finds objects again, or loses them).
    pub fn objects_mut(&mut self) -> &mut Objects {
        &mut self.objects
    }

    /// Asks the server to run `request`'s search ahead (`ahead` handles), when it is a
    /// C_FindObjectsInit on a session the journal holds.
    pub fn ask_prefetch(&self, request: &mut Request, ahead: u64) {
        if let Request::FindObjectsInit {
            session, prefetch, ..
        } = request
        {
            if self.sessions.contains_key(session) {
                *prefetch = ahead;
            }
        }
    }

    /// Asks the server to complete `request`'s size query, when it is one of a single-part
    /// function whose operation the journal holds (its result is kept there), or a
    /// C_GetAttributeValue size query on a session the journal holds.
    pub fn ask_completion(&self, request: &mut Request) {
        let Some(session) = request.session() else {
            return;
        };
        if let Request::GetAttributeValue {
            query, complete, ..
        } = request
        {
            *complete = completable(query) && self.sessions.contains_key(&session);
            return;
        }
        let Some((kind, _, out)) = ahead::single_part(request) else {
            return;
        };
        if out.buffer || out.len.is_none() {
            return;
        }
        let held = self.sessions.get(&session).is_some_and(|s| {
            s.ops
                .iter()
                .any(|o| o.kind == kind && o.completed.is_none())
        });
        if let (true, Some(capacity)) = (held, request.capacity_mut()) {
            capacity.complete = true;
        }
    }

    /// The answer to `request` (with the shim's handles) from a completed size query, when it
    /// is that query's follow-up ([`Completed::follow_up`]); the application's operation ends
    /// with its result, as the vendor's did with the real call.
    pub fn serve_completed(&mut self, request: &Request) -> Option<Response> {
        let (kind, _, _) = ahead::single_part(request)?;
        let s = self.sessions.get_mut(&request.session()?)?;
        let i = s
            .ops
            .iter()
            .position(|o| o.kind == kind && o.completed.is_some())?;
        let completed = s.ops[i].completed.as_ref()?;
        match completed.follow_up(request)? {
            FollowUp::Size => Some(completed.size_answer()),
            FollowUp::Result => s.ops.remove(i).completed.map(Completed::into_answer),
        }
    }

    /// Whether session `session` (the shim's handle) has an operation the vendor ended ahead
    /// of the application ([`OpRecord::ended_early`]).
    pub fn vendor_ended_early(&self, session: u64) -> bool {
        let s = self.sessions.get(&session);
        s.is_some_and(|s| s.ops.iter().any(OpRecord::ended_early))
    }

    /// Whether `request`, on its session `session`, is one the shim may answer (the session
    /// has a completed size query, a search run ahead), or one that makes the values kept of
    /// completed C_GetAttributeValue size queries void.
    pub fn answers_ahead(&self, session: Option<u64>, request: &Request) -> bool {
        let on_session = session.is_some_and(|session| {
            self.sessions.get(&session).is_some_and(|s| {
                s.ops
                    .iter()
                    .any(|o| o.completed.is_some() || o.search.is_some())
            })
        });
        on_session || self.attributes_ahead.concern(session, request)
    }

    /// The answer to a C_GetAttributeValue from a completed size query, when it is that
    /// query's follow-up; what was kept is dropped when `request` makes it void.
    pub fn serve_attributes(&mut self, request: &Request) -> Option<Response> {
        self.attributes_ahead.serve(request)
    }

    /// C_FindObjects and C_FindObjectsFinal on a search run ahead ([`Search::answer`]); the
    /// operation is gone once its C_FindObjectsFinal is answered.
    pub fn serve_search(&mut self, request: &mut Request) -> Option<Served> {
        let s = self.sessions.get_mut(&request.session()?)?;
        let i = s.ops.iter().position(|o| o.search.is_some())?;
        let (served, ended) = s.ops[i].search.as_mut()?.answer(request)?;
        if ended {
            s.ops.remove(i);
        }
        Some(served)
    }

    /// The request to send to the current server: a copy of `request` with the server's
    /// handles in place of the shim's. A session that was lost answers
    /// CKR_SESSION_HANDLE_INVALID, an object that was lost (a session object, or a token
    /// object not found again after a restart) CKR_OBJECT_HANDLE_INVALID. A session the shim
    /// never handed out travels as CK_INVALID_HANDLE (0, never a session: v2.40 §2.3), an
    /// object as it is, so the vendor library gives its own answer to it, in its own order of
    /// checks.
    pub fn to_server(&self, request: &Request) -> Rv<Request> {
        let mut sent = request.clone();
        if let Some(session) = sent.session_mut() {
            *session = match self.sessions.get(session) {
                Some(SessionRecord { real: Some(r), .. }) => *r,
                Some(SessionRecord { real: None, .. }) => return Err(CKR_SESSION_HANDLE_INVALID),
                None => wire(CK_INVALID_HANDLE),
            };
        }
        for object in sent.object_handles_mut().into_iter().flatten() {
            *object = self.objects.to_server(*object)?;
        }
        handles::map_param_key(&mut sent, |h| self.objects.to_server(h))?;
        Ok(sent)
    }

    /// The shim's object handles `request` names that wait to be found again on the current
    /// server (no session of their token was open when the application moved to it), with
    /// their identifying attributes.
    pub fn pending_in(&self, request: &Request) -> Vec<(u64, Vec<Attribute>)> {
        handles::objects_named(request)
            .filter_map(|v| Some((v, self.objects.pending(v)?)))
            .collect()
    }

    /// The server's object handles in a response to `request` that the shim has no handle
    /// for yet and that may be token objects (whose identity is worth reading): a session
    /// object made by this call cannot outlive its server.
    pub fn new_objects(&self, request: &Request, response: &mut Response) -> Vec<u64> {
        let Some(handout) = Handout::of(request) else {
            return Vec::new();
        };
        handout
            .objects(response)
            .into_iter()
            .enumerate()
            .filter(|(i, h)| {
                !handout.makes_session_object(*i)
                    && **h != wire(CK_INVALID_HANDLE)
                    && self.objects.shim_of(**h).is_none()
            })
            .map(|(_, h)| *h)
            .collect()
    }

    /// After the answer: records what the call changed and turns the server's handles in the
    /// response into the shim's. `request` is the application's (with the shim's handles),
    /// `identities` the identifying attributes read for new object handles (see
    /// [`Journal::new_objects`]).
    pub fn after(
        &mut self,
        request: &Request,
        response: Response,
        keep_pin: bool,
        identities: Vec<Identity>,
    ) -> Response {
        let (response, completed) = ahead::unwrap(request, response, &mut self.attributes_ahead);
        if let Some(answer) = self.record_session_change(request, &response, keep_pin) {
            return answer;
        }
        self.record_step(request, response.rv(), completed);
        let response = self.objects_to_shim(request, response, identities);
        self.record_search(request.session(), response)
    }

    /// The shim answered `request` with the HSM's `rv` itself: a replay or a repair met a lost
    /// device (DESIGN.md, "Healing the HSM side"). An operation the call would have ended in
    /// the vendor ends here too (PKCS#11 v2.40 section 5.12: a C_Sign that fails, other than
    /// for a short buffer, terminates the signing operation), so that no replay brings it
    /// back behind the application's back.
    pub fn refused(&mut self, request: &Request, rv: CK_RV) {
        self.record_step(request, rv, None);
    }

    /// What `request` changed of the application's sessions, logins and objects. A new
    /// session's answer, with the shim's handle, is returned.
    fn record_session_change(
        &mut self,
        request: &Request,
        response: &Response,
        keep_pin: bool,
    ) -> Option<Response> {
        let rv = response.rv();
        let session = request.session();
        let [object, _] = request.object_handles();
        match request {
            Request::OpenSession { slot, flags, .. } => {
                if let Response::Handle(real) = *response {
                    let v = free_handle(&self.sessions, real, &mut self.next_own_session);
                    let record = SessionRecord {
                        slot: *slot,
                        flags: *flags,
                        real: Some(real),
                        ops: Vec::new(),
                        closing: false,
                    };
                    self.sessions.insert(v, record);
                    return Some(Response::Handle(v));
                }
            }
            Request::CloseSession { .. } => {
                if matches!(rv, CKR_OK | CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED) {
                    self.session_closed(session);
                }
            }
            Request::CloseAllSessions { slot } if rv == CKR_OK => {
                let closed = self.sessions_on(*slot);
                self.objects.drop_owned(&closed);
                self.sessions.retain(|_, s| s.slot != *slot);
                self.logins.remove(slot);
            }
            Request::Login { user_type, pin, .. } => {
                self.logged_in(session, rv, *user_type, pin, None, keep_pin)
            }
            Request::LoginUser {
                user_type,
                pin,
                username,
                ..
            } => self.logged_in(session, rv, *user_type, pin, Some(username), keep_pin),
            Request::Logout { .. } if rv == CKR_OK => {
                if let Some(slot) = session.and_then(|s| self.session_slot(s)) {
                    self.logins.remove(&slot);
                }
            }
            Request::SetPin { new_pin, .. } if rv == CKR_OK => {
                let slot = session.and_then(|s| self.session_slot(s));
                if let Some(login) = slot.and_then(|s| self.logins.get_mut(&s)) {
                    if login.pin.is_some() {
                        login.pin = Some(new_pin.clone());
                    }
                }
            }
            Request::SetAttributeValue { template, .. } if rv == CKR_OK => {
                if let Some(object) = object {
                    self.objects.update_identity(object, template);
                }
            }
            Request::DestroyObject { .. } if rv == CKR_OK => {
                if let Some(object) = object {
                    self.objects.remove(object);
                }
            }
            _ => {}
        }
        None
    }

    /// A session closed: its session objects are gone, and closing the application's last
    /// session on a token logs it out (v2.40 §5.6.2, §6.7.3).
    fn session_closed(&mut self, session: Option<u64>) {
        let Some(v) = session else {
            return;
        };
        self.objects.drop_owned(&[v]);
        if let Some(s) = self.sessions.remove(&v) {
            if !self.sessions.values().any(|o| o.slot == s.slot) {
                self.logins.remove(&s.slot);
            }
        }
    }

    /// Where `request` leaves its session's operations ([`Step`]): an Init recorded, an
    /// operation ended or no longer fresh, a completed size query kept with its operation.
    fn record_step(&mut self, request: &Request, rv: CK_RV, completed: Option<Completed>) {
        let Some(s) = request.session().and_then(|s| self.sessions.get_mut(&s)) else {
            return;
        };
        match request.descriptor().step {
            Step::Init(kind) if rv == CKR_OK => {
                s.ops.retain(|o| o.kind != kind);
                s.ops.push(OpRecord {
                    kind,
                    init: request.clone(),
                    fresh: true,
                    completed: None,
                    search: None,
                });
            }
            Step::SinglePart(kind) | Step::Final(kind) => {
                let size_query = request.capacity().is_some_and(Out::is_query);
                let goes_on = (rv == CKR_OK && size_query) || rv == CKR_BUFFER_TOO_SMALL;
                if !goes_on {
                    s.ops.retain(|o| o.kind != kind);
                } else if let Some(c) = completed {
                    if let Some(op) = s.ops.iter_mut().find(|o| o.kind == kind) {
                        op.completed = Some(c);
                    }
                }
            }
            // Once the server has answered a call that took data, the operation holds
            // state no replay can rebuild. (A call whose answer was lost changed nothing
            // that survives on a new server: it is resent there after the Init.)
            Step::Data(kinds) => {
                for op in s.ops.iter_mut().filter(|o| kinds.contains(&o.kind)) {
                    op.fresh = false;
                }
            }
            Step::Ends(kind) => s.ops.retain(|o| o.kind != kind),
            Step::Forget => s.ops.clear(),
            _ => {}
        }
    }

    /// A search run ahead: its handles are kept with the operation, and the application
    /// sees C_FindObjectsInit's answer.
    fn record_search(&mut self, session: Option<u64>, response: Response) -> Response {
        let Response::Found {
            objects,
            find_rv,
            final_rv,
        } = response
        else {
            return response;
        };
        let op = session
            .and_then(|v| self.sessions.get_mut(&v))
            .and_then(|s| s.ops.iter_mut().find(|o| o.kind == OpKind::Find));
        if let (Some(op), true) = (op, find_rv == wire(CKR_OK)) {
            // The vendor has given handles: replaying the Init no longer rebuilds it.
            op.fresh = false;
            let asked = match &op.init {
                Request::FindObjectsInit { prefetch, .. } => *prefetch,
                _ => 0,
            };
            op.search = Some(Search {
                found: objects.into(),
                asked,
                ended: final_rv,
                give_back: false,
                served: 0,
            });
        }
        Response::Rv(wire(CKR_OK))
    }

    fn logged_in(
        &mut self,
        session: Option<u64>,
        rv: CK_RV,
        user_type: u64,
        pin: &Pin,
        username: Option<&Bytes>,
        keep_pin: bool,
    ) {
        // CKU_CONTEXT_SPECIFIC authorises one operation (v2.40 §5.6.7), it is not a login.
        if rv != CKR_OK || user_type == CKU_CONTEXT_SPECIFIC {
            return;
        }
        if let Some(slot) = session.and_then(|s| self.session_slot(s)) {
            self.logins.insert(
                slot,
                LoginRecord {
                    user_type,
                    pin: keep_pin.then(|| pin.clone()),
                    username: username.cloned(),
                },
            );
        }
    }

    /// Before C_CloseSession or C_CloseAllSessions leaves: the sessions it closes are no
    /// longer to be mended.
    pub fn closing(&mut self, request: &Request) {
        match request {
            Request::CloseSession { session } => {
                if let Some(s) = self.sessions.get_mut(session) {
                    s.closing = true;
                }
            }
            Request::CloseAllSessions { slot } => {
                for s in self.sessions.values_mut().filter(|s| s.slot == *slot) {
                    s.closing = true;
                }
            }
            _ => {}
        }
    }

    /// A lost session the application closes: its handle is released.
    pub fn forget_session(&mut self, session: u64) {
        if self
            .sessions
            .get(&session)
            .is_some_and(|s| s.real.is_none())
        {
            self.sessions.remove(&session);
        }
    }

    /// The server's object handles of a response, replaced by the shim's; new ones are
    /// recorded with their identity and, for session objects made here, their session.
    fn objects_to_shim(
        &mut self,
        request: &Request,
        mut response: Response,
        identities: Vec<Identity>,
    ) -> Response {
        let Some(handout) = Handout::of(request) else {
            return response;
        };
        let session = request.session();
        let slot = session.and_then(|s| self.session_slot(s)).unwrap_or(0);
        let mut identities: HashMap<u64, Option<Vec<Attribute>>> = identities
            .into_iter()
            .map(|i| (i.object, i.attributes))
            .collect();
        for (i, h) in handout.objects(&mut response).into_iter().enumerate() {
            if *h == wire(CK_INVALID_HANDLE) {
                continue;
            }
            *h = match self.objects.shim_of(*h) {
                Some(v) => v,
                None => {
                    let identity = identities.remove(h).flatten();
                    // An object the application held before a restart, handed out again.
                    match identity
                        .as_ref()
                        .and_then(|id| self.objects.pending_as(slot, id))
                    {
                        Some(v) => {
                            self.objects.resolve(v, Some(*h));
                            v
                        }
                        None => {
                            let owner = session.filter(|_| handout.makes_session_object(i));
                            self.objects.add(*h, slot, identity, owner)
                        }
                    }
                }
            };
        }
        response
    }

    /// A new server instance: every server handle is void. Object handles keep their records
    /// (token objects are found again); sessions are reopened by the caller. The instance
    /// left behind is remembered, and connections opened before are known by their epoch;
    /// coming back to the instance the journal was voided on ([`Journal::void`]) leaves
    /// nothing.
    pub fn switch_instance(&mut self, instance: InstanceId) {
        let previous = match self.instance {
            NONE => self.voided_from.take(),
            on => Some(on),
        };
        if previous != Some(instance) {
            if let Some(previous) = previous.filter(|p| *p != NONE) {
                if self.left.len() == LEFT_KEPT {
                    self.left.pop_front();
                }
                self.left.push_back(previous);
            }
            self.epoch += 1;
        }
        self.instance = instance;
        self.voided_from = None;
        self.objects.void_all();
        for s in self.sessions.values_mut() {
            s.real = None;
        }
    }

    /// A replay on the journal's instance met a lost device (the HSM is down; DESIGN.md,
    /// "Healing the HSM side"): the application stays on that instance with nothing restored,
    /// and the next call that needs its handles replays again, there or on the instance that
    /// replaces it. Unlike a failed connection, the instance is not left.
    pub fn void(&mut self) {
        if self.instance != NONE {
            self.voided_from = Some(self.instance);
        }
        self.instance = NONE;
        self.objects.void_all();
        for s in self.sessions.values_mut() {
            s.real = None;
        }
    }

    /// Whether the last replay met a lost device ([`Journal::void`]).
    pub fn voided(&self) -> bool {
        self.voided_from.is_some()
    }

    /// Forgets everything (C_Finalize); kept PINs are wiped as they drop.
    pub fn clear(&mut self) {
        self.sessions.clear();
        self.objects.clear();
        self.logins.clear();
        self.attributes_ahead.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::attribute::AttrValue;
    use protocol::mechanism::{MechParam, Mechanism};
    use protocol::shape::{Out, Outputs};

    const A: InstanceId = [1; 16];
    const B: InstanceId = [2; 16];
    const C: InstanceId = [3; 16];

    /// Sends `request` through the journal to a server that answers `response`.
    fn exchange(j: &mut Journal, request: Request, response: Response) -> Rv<Response> {
        j.to_server(&request)?;
        Ok(j.after(&request, response, true, vec![]))
    }

    fn open(j: &mut Journal, real: u64) -> u64 {
        match exchange(
            j,
            Request::OpenSession {
                slot: 0,
                flags: 6,
                outputs: Outputs::ALL,
            },
            Response::Handle(real),
        ) {
            Ok(Response::Handle(h)) => h,
            other => panic!("{other:?}"),
        }
    }

    fn sign_init(session: u64, key: u64) -> Request {
        Request::SignInit {
            session,
            mechanism: Mechanism {
                ty: CKM_ECDSA,
                param: MechParam::None,
            },
            key,
        }
    }

    #[test]
    fn the_instances_left_are_remembered_and_none_is_not_one() {
        let mut j = Journal::new(A);
        j.switch_instance(B);
        assert!(j.has_left(&A) && !j.has_left(&B));
        // A failed replay leaves the application on no instance; none is never "left".
        j.switch_instance([0; 16]);
        j.switch_instance(A);
        assert!(j.has_left(&B) && !j.has_left(&[0; 16]));
        for i in 0..2 * LEFT_KEPT as u8 {
            j.switch_instance([i + 100; 16]);
        }
        assert_eq!(j.left.len(), LEFT_KEPT);
    }

    #[test]
    fn a_replay_voided_by_a_lost_device_leaves_no_instance() {
        let mut j = Journal::new(A);
        j.switch_instance(B);
        let epoch = j.epoch();
        // The replay on B met the HSM down: the application is still on B.
        j.void();
        assert!(j.voided() && j.instance() == NONE && !j.has_left(&B));
        // Replayed again on B: no new epoch (connections to B stay usable), nothing left.
        j.switch_instance(B);
        assert_eq!((j.epoch(), j.instance(), j.voided()), (epoch, B, false));
        assert!(!j.has_left(&B));
        // Voided again, then replayed on B's replacement: B is left now.
        j.void();
        j.switch_instance(C);
        assert!(j.has_left(&B) && j.epoch() == epoch + 1);
    }

    #[test]
    fn handles_are_the_servers_until_a_number_is_taken() {
        let mut j = Journal::new(A);
        assert_eq!(open(&mut j, 1), 1);
        j.switch_instance(B);
        // The new server's session 1 must not take the place of the lost session 1.
        let second = open(&mut j, 1);
        assert_ne!(second, 1);
        let r = Request::GetSessionInfo {
            session: 1,
            outputs: Outputs::ALL,
        };
        assert_eq!(j.to_server(&r).unwrap_err(), CKR_SESSION_HANDLE_INVALID);
        // A number never handed out is the vendor's to judge, as CK_INVALID_HANDLE.
        let r = Request::GetSessionInfo {
            session: 77,
            outputs: Outputs::ALL,
        };
        assert_eq!(j.to_server(&r).unwrap().session(), Some(0));
        let r = Request::GetSessionInfo {
            session: second,
            outputs: Outputs::ALL,
        };
        assert_eq!(
            j.to_server(&r).unwrap(),
            Request::GetSessionInfo {
                session: 1,
                outputs: Outputs::ALL,
            }
        );
    }

    #[test]
    fn object_handles_lost_found_again_or_never_handed_out() {
        let mut j = Journal::new(A);
        let s = open(&mut j, 1);
        let key = j.objects.add(7, 0, Some(vec![]), None);
        let session_object = j.objects.add(8, 0, None, Some(s));
        assert_eq!((key, session_object), (7, 8));
        j.switch_instance(B);
        j.sessions.get_mut(&s).unwrap().real = Some(3);
        j.objects.resolve(key, Some(9));
        assert_eq!(j.to_server(&sign_init(s, key)).unwrap(), sign_init(3, 9));
        let r = sign_init(s, session_object);
        assert_eq!(j.to_server(&r).unwrap_err(), CKR_OBJECT_HANDLE_INVALID);
        // Never handed out: the vendor library judges it.
        assert_eq!(
            j.to_server(&sign_init(s, 1234)).unwrap(),
            sign_init(3, 1234)
        );
        // The new server's handle 9 is the shim's 7.
        let found = exchange(
            &mut j,
            Request::FindObjects {
                session: s,
                max_count: 4,
                outputs: Outputs::ALL,
            },
            Response::Ulongs {
                rv: CKR_OK,
                count: 1,
                values: vec![9],
            },
        )
        .unwrap();
        assert!(matches!(found, Response::Ulongs { values, .. } if values == vec![7]));
    }

    #[test]
    fn a_search_on_a_new_server_hands_out_the_old_handle_of_the_same_object() {
        let mut j = Journal::new(A);
        let s = open(&mut j, 1);
        let id = |v: &[u8]| {
            vec![
                Attribute {
                    ty: CKA_CLASS,
                    value: AttrValue::Ulong(CKO_PRIVATE_KEY),
                },
                Attribute {
                    ty: CKA_ID,
                    value: AttrValue::Bytes(v.to_vec()),
                },
            ]
        };
        let key = j.objects.add(7, 0, Some(id(b"a")), None);
        j.objects.add(8, 0, Some(id(b"b")), None);
        j.switch_instance(B);
        j.sessions.get_mut(&s).unwrap().real = Some(1);
        assert_eq!(j.pending_in(&sign_init(s, key)), vec![(key, id(b"a"))]);
        // The new server's handle 20 has key's identity (attributes in another order).
        let mut reversed = id(b"a");
        reversed.reverse();
        let find = |j: &mut Journal, real: u64, identity: Vec<Attribute>| {
            let request = Request::FindObjects {
                session: s,
                max_count: 1,
                outputs: Outputs::ALL,
            };
            j.to_server(&request).unwrap();
            j.after(
                &request,
                Response::Ulongs {
                    rv: CKR_OK,
                    count: 1,
                    values: vec![real],
                },
                true,
                vec![Identity {
                    object: real,
                    attributes: Some(identity),
                }],
            )
        };
        let found = find(&mut j, 20, reversed);
        assert!(matches!(found, Response::Ulongs { values, .. } if values == vec![key]));
        assert!(j.pending_in(&sign_init(s, key)).is_empty());
        // An object never seen before gets a handle of its own.
        let found = find(&mut j, 21, id(b"c"));
        assert!(matches!(found, Response::Ulongs { values, .. } if values == vec![21]));
    }

    #[test]
    fn a_concatenated_key_parameter_is_translated_too() {
        let mut j = Journal::new(A);
        let s = open(&mut j, 1);
        let key = j.objects.add(5, 0, Some(vec![]), None);
        j.switch_instance(B);
        j.sessions.get_mut(&s).unwrap().real = Some(1);
        j.objects.resolve(key, Some(6));
        let derive = |base: u64, other: CK_OBJECT_HANDLE| Request::DeriveKey {
            session: 1,
            mechanism: Mechanism {
                ty: CKM_CONCATENATE_BASE_AND_KEY,
                param: MechParam::Bytes(other.to_ne_bytes().to_vec()),
            },
            base_key: base,
            template: vec![].into(),
            outputs: Outputs::ALL,
        };
        assert_eq!(j.to_server(&derive(key, 5)).unwrap(), derive(6, 6));
        // Lost: the parameter's handle answers as the base key's would.
        j.objects.lose(key);
        let r = derive(7, key as CK_OBJECT_HANDLE);
        assert_eq!(j.to_server(&r).unwrap_err(), CKR_OBJECT_HANDLE_INVALID);
    }

    #[test]
    fn operations_are_fresh_until_they_take_data_and_end_by_the_two_call_rules() {
        let mut j = Journal::new(A);
        let s = open(&mut j, 1);
        let ops = |j: &Journal| -> Vec<(OpKind, bool)> {
            j.sessions[&s]
                .ops
                .iter()
                .map(|o| (o.kind, o.fresh))
                .collect()
        };
        exchange(&mut j, sign_init(s, 0), Response::Rv(CKR_OK)).unwrap();
        assert_eq!(ops(&j), [(OpKind::Sign, true)]);
        let sign = |capacity| Request::Sign {
            session: s,
            data: vec![1].into(),
            capacity,
        };
        let output = |rv| Response::Output {
            rv,
            len: 64,
            data: vec![],
        };
        // A size query and a too-small buffer leave it active (v2.40 §5.2).
        exchange(&mut j, sign(Out::query(0)), output(CKR_OK)).unwrap();
        exchange(&mut j, sign(Out::buffer(1)), output(CKR_BUFFER_TOO_SMALL)).unwrap();
        assert_eq!(ops(&j), [(OpKind::Sign, true)]);
        exchange(&mut j, sign(Out::buffer(64)), output(CKR_OK)).unwrap();
        assert!(ops(&j).is_empty());
        // An answered update: can no longer be replayed.
        exchange(&mut j, sign_init(s, 0), Response::Rv(CKR_OK)).unwrap();
        exchange(
            &mut j,
            Request::SignUpdate {
                session: s,
                data: vec![1].into(),
            },
            Response::Rv(CKR_OK),
        )
        .unwrap();
        assert_eq!(ops(&j), [(OpKind::Sign, false)]);
        // A failed Init leaves the active operation as it was.
        exchange(&mut j, sign_init(s, 0), Response::Rv(CKR_OPERATION_ACTIVE)).unwrap();
        assert_eq!(ops(&j), [(OpKind::Sign, false)]);
    }

    #[test]
    fn session_objects_made_here_are_forgotten_with_their_session() {
        let mut j = Journal::new(A);
        let s = open(&mut j, 1);
        let create = |token: Option<bool>| Request::CreateObject {
            session: s,
            template: token
                .map(|t| Attribute {
                    ty: CKA_TOKEN,
                    value: AttrValue::Bool(t),
                })
                .into_iter()
                .collect(),
            outputs: Outputs::ALL,
        };
        let session_object = exchange(&mut j, create(None), Response::Handle(10)).unwrap();
        let token_object = exchange(&mut j, create(Some(true)), Response::Handle(11)).unwrap();
        assert!(j.objects.get(10).is_some() && j.objects.get(11).is_some());
        exchange(
            &mut j,
            Request::CloseSession { session: s },
            Response::Rv(CKR_OK),
        )
        .unwrap();
        assert_eq!(
            (session_object, token_object),
            (Response::Handle(10), Response::Handle(11))
        );
        assert!(j.objects.get(10).is_none() && j.objects.get(11).is_some());
    }

    #[test]
    fn a_context_specific_login_is_not_a_login_to_replay() {
        let mut j = Journal::new(A);
        let s = open(&mut j, 1);
        exchange(
            &mut j,
            Request::Login {
                session: s,
                user_type: CKU_CONTEXT_SPECIFIC,
                pin: Some(b"1234".to_vec().into()),
            },
            Response::Rv(CKR_OK),
        )
        .unwrap();
        assert!(j.logins.is_empty());
    }

    #[test]
    fn logins_are_kept_per_slot_until_logout_or_the_last_session_closes() {
        let mut j = Journal::new(A);
        let (s1, s2) = (open(&mut j, 1), open(&mut j, 2));
        let login = |session| Request::Login {
            session,
            user_type: CKU_USER,
            pin: Some(b"1234".to_vec().into()),
        };
        exchange(&mut j, login(s1), Response::Rv(CKR_PIN_INCORRECT)).unwrap();
        assert!(j.logins.is_empty());
        exchange(&mut j, login(s1), Response::Rv(CKR_OK)).unwrap();
        assert_eq!(
            j.logins[&0].pin.clone().flatten().as_deref(),
            Some(&b"1234"[..])
        );
        exchange(
            &mut j,
            Request::CloseSession { session: s1 },
            Response::Rv(CKR_OK),
        )
        .unwrap();
        assert!(j.logins.contains_key(&0), "another session is open");
        exchange(
            &mut j,
            Request::CloseSession { session: s2 },
            Response::Rv(CKR_OK),
        )
        .unwrap();
        assert!(j.logins.is_empty(), "the last session closed");
    }
}
