//! What the shim remembers of the application's state on the server, so that it survives a
//! server restart (DESIGN.md, "Recovery model"): the application's sessions and object handles
//! (the shim's own, stable handles, each mapped to the current server's), its logins, and the
//! operation each session has initialised.
//!
//! This module is bookkeeping only, no I/O: [`super::recovery`] replays it on a new server.
//!
//! Handles: the application only ever sees the shim's handles. A new handle takes the server's
//! number when that number is free (so, until a restart, the application sees exactly what the
//! vendor library handed out), else a number of the shim's own. After a restart the shim's
//! handles keep their numbers and point at the new server's sessions and objects; a handle
//! that could not be brought back can never alias a session or object of the new server.

use std::collections::HashMap;

use cryptoki_sys::*;
use protocol::attribute::{completable, AttrOut, Attribute, Want};
use protocol::function::{OpKind, Step};
use protocol::message::{Function, Identity, Pin, Request, Response};
use protocol::objects::{self, Handout};
use protocol::shape::{Array, Bytes, Out};

use crate::ffi::{narrow, wire, Rv};

pub use protocol::handshake::InstanceId;

/// How many instances the application left are remembered (each was its instance once).
const LEFT_KEPT: usize = 16;

/// First number of the shim's own handles, used when the server's number is taken.
const OWN_HANDLES: u64 = 0x4000_0000;

/// Whether the answer to `request` changes what the journal holds or carries object handles;
/// the answers to other calls (queries, random, single-shot message calls) pass untouched.
pub fn records(request: &Request) -> bool {
    let d = request.descriptor();
    d.step != Step::None
        || d.recorded
        || d.hands_out
        || matches!(request, Request::GetAttributeValue { complete: true, .. })
}

/// Whether `request` is a C_*Init that the journal records (with the shim's handles).
pub fn is_init(request: &Request) -> bool {
    matches!(request.descriptor().step, Step::Init(_))
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

/// A search the server ran ahead of the application (DESIGN.md, "Two-call functions", its
/// rule applied to C_FindObjects): the first handles were fetched with C_FindObjectsInit,
/// and, when they were all there is, the vendor's search was ended with C_FindObjectsFinal.
/// C_FindObjects is answered from `found`, then by the vendor when its search goes on;
/// C_FindObjectsFinal with the vendor's own answer. Any other call on the session first gets
/// the vendor's search back where it was (Init and the same C_FindObjects replayed), so
/// that the vendor answers it.
#[derive(Debug, Clone)]
pub struct Search {
    /// The shim's handles found and not yet handed to the application.
    pub found: std::collections::VecDeque<u64>,
    /// How many handles the prefetch asked for.
    pub asked: u64,
    /// The vendor's C_FindObjectsFinal answer, when the prefetch ended its search; `None`:
    /// the vendor's search goes on.
    pub ended: Option<u64>,
}

/// What the journal answers of a C_FindObjects on a search run ahead.
pub enum Served {
    /// The whole answer.
    All(Response),
    /// These handles first; the vendor's search gives the rest (the request asks for fewer
    /// now).
    Part(Vec<u64>),
}

/// The real call the server made after a size query it was asked to complete (DESIGN.md,
/// "Two-call functions"): the vendor has ended the operation; the application, which saw
/// only the size query, has not. Its follow-up (the same function and input, a buffer of at
/// least `len`) is answered from here; any other call on the session first gets the
/// operation back on the vendor by replaying its Init (it had taken no data: a single-part
/// size query leaves nothing behind), so that the vendor answers it.
#[derive(Debug, Clone)]
pub struct Completed {
    function: Function,
    input: Bytes,
    /// The size query's answer.
    len: u64,
    /// The real call's answer.
    rv: u64,
    out_len: u64,
    data: Vec<u8>,
}

/// A single-part function whose size query may be completed on the server (v2.40 §5.2):
/// its operation, its input and its output. The `*Final` and `*Update` functions are not
/// among them: after their size query the application may still feed data, which no replay
/// of the Init can rebuild.
pub fn single_part(request: &Request) -> Option<(OpKind, &Bytes, &Out)> {
    let Step::SinglePart(kind) = request.descriptor().step else {
        return None;
    };
    let input = request.data().or_else(|| request.signature())?;
    Some((kind, input, request.capacity()?))
}

/// Asks the server to run `request`'s search ahead (`ahead` handles), when it is a
/// C_FindObjectsInit on a session the journal holds.
pub fn ask_prefetch(request: &mut Request, journal: &Journal, ahead: u64) {
    if let Request::FindObjectsInit {
        session, prefetch, ..
    } = request
    {
        if journal.sessions.contains_key(session) {
            *prefetch = ahead;
        }
    }
}

/// The answer to a C_FindObjects of which the journal gave `prefix` (the first handles) and
/// the vendor the rest.
pub fn after_prefix(prefix: Vec<u64>, response: Response) -> Response {
    match response {
        Response::Ulongs { rv, values, .. } if !prefix.is_empty() && rv == wire(CKR_OK) => {
            let values: Vec<u64> = prefix.into_iter().chain(values).collect();
            Response::Ulongs {
                rv,
                count: values.len() as u64,
                values,
            }
        }
        r => r,
    }
}

/// Asks the server to complete `request`'s size query, when it is one of a single-part
/// function whose operation the journal holds (its result is kept there).
pub fn ask_completion(request: &mut Request, journal: &Journal) {
    let Some(session) = request.session_mut().copied() else {
        return;
    };
    if let Request::GetAttributeValue {
        query, complete, ..
    } = request
    {
        *complete = completable(query) && journal.sessions.contains_key(&session);
        return;
    }
    let Some((kind, _, out)) = single_part(request) else {
        return;
    };
    if out.buffer || out.len.is_none() {
        return;
    }
    let held = journal.sessions.get(&session).is_some_and(|s| {
        s.ops
            .iter()
            .any(|o| o.kind == kind && o.completed.is_none())
    });
    if let (true, Some(capacity)) = (held, request.capacity_mut()) {
        capacity.complete = true;
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

/// One object handle handed to the application.
#[derive(Debug)]
pub struct ObjectRecord {
    /// The current server's handle; `None` when the object is not (or no longer) known there.
    pub real: Option<u64>,
    pub slot: u64,
    /// For a token object: the attributes that find it again on a new server.
    pub identity: Option<Vec<Attribute>>,
    /// For a session object made through the shim: the session that made it, whose closing
    /// destroys it (v2.40 §5.6.2), and ends this record.
    pub owner: Option<u64>,
    /// The shim replayed a login on the object's token since the handle was last checked:
    /// the vendor library may have renumbered it (SoftHSM2 renumbers private objects after a
    /// logout), so an "invalid handle" answer sends the shim looking for it again. Only the
    /// shim's own replays set this: a logout and login by the application keep the vendor's
    /// behaviour.
    pub recheck: bool,
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

/// The shim's handles of a request, taken before they are replaced by the server's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shimmed {
    pub session: Option<u64>,
    pub objects: [Option<u64>; 2],
    /// The handle inside a CKM_CONCATENATE_BASE_AND_KEY parameter.
    pub param_key: Option<u64>,
}

/// CKM_CONCATENATE_BASE_AND_KEY: its parameter is a `CK_OBJECT_HANDLE` (v2.40 Mechanisms
/// §2.37.2), which travels as bytes.
fn param_key_mut(request: &mut Request) -> Option<&mut Vec<u8>> {
    match request {
        Request::DeriveKey { mechanism, .. } if mechanism.ty == CKM_CONCATENATE_BASE_AND_KEY => {
            match &mut mechanism.param {
                protocol::mechanism::MechParam::Bytes(b)
                    if b.len() == std::mem::size_of::<CK_OBJECT_HANDLE>() =>
                {
                    Some(b)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The handle a CKM_CONCATENATE_BASE_AND_KEY parameter holds (its length checked by
/// [`param_key_mut`]).
fn handle_in(bytes: &[u8]) -> u64 {
    wire(CK_OBJECT_HANDLE::from_ne_bytes(
        bytes.try_into().expect("length checked"),
    ))
}

/// The application's state on the server, as the shim knows it.
#[derive(Debug)]
pub struct Journal {
    /// The server instance the `real` handles belong to.
    pub instance: InstanceId,
    pub sessions: HashMap<u64, SessionRecord>,
    pub objects: HashMap<u64, ObjectRecord>,
    /// The current server's object handles → the shim's.
    by_real: HashMap<u64, u64>,
    pub logins: HashMap<u64, LoginRecord>,
    /// Counts instance switches: a connection opened before the latest one, to another
    /// instance, belongs to a server the application has left.
    pub epoch: u64,
    /// The instances the application left, latest last: it never goes back to one, so
    /// that it cannot move back and forth between replicas (DESIGN.md, "Shim semantics").
    left: std::collections::VecDeque<InstanceId>,
    next_own: u64,
    /// C_GetAttributeValue size queries the server completed, by session (shim handle).
    attributes_ahead: HashMap<u64, AttributesAhead>,
}

/// The real C_GetAttributeValue the server made after a size query it was asked to complete
/// (DESIGN.md, "Two-call functions"). The follow-up (same object, same attributes in the
/// same order, each with a buffer of at least its length, or the lengths asked again) is
/// answered from here. Nothing is left on the vendor (attributes are no operation), so any
/// other call on the session simply drops it, and so does any call that may change what the
/// vendor answers for the object (C_SetAttributeValue, C_DestroyObject, a login or logout,
/// a session closed, any call that changes the token).
#[derive(Debug, Clone)]
struct AttributesAhead {
    /// The shim's handle of the object.
    object: u64,
    types: Vec<u64>,
    /// The size query's answer (its return value was CKR_OK).
    lengths: Vec<AttrOut>,
    /// The real call's answer.
    rv: u64,
    values: Vec<AttrOut>,
}

impl Journal {
    pub fn new(instance: InstanceId) -> Self {
        Self {
            instance,
            sessions: HashMap::new(),
            objects: HashMap::new(),
            by_real: HashMap::new(),
            logins: HashMap::new(),
            epoch: 0,
            left: std::collections::VecDeque::new(),
            next_own: OWN_HANDLES,
            attributes_ahead: HashMap::new(),
        }
    }

    /// The answer to `request` (with the shim's handles) from a completed size query, when it
    /// is that query's follow-up: the same function and input, and a NULL buffer (the size
    /// again) or one of at least the size the vendor gave. The vendor's operation ended with
    /// the real call; the application's ends now too (v2.40 §5.2). `None` for anything
    /// else, which the vendor answers.
    pub fn serve_completed(&mut self, request: &mut Request) -> Option<Response> {
        let session = request.session_mut().copied()?;
        let (kind, input, out) = single_part(request)?;
        let s = self.sessions.get_mut(&session)?;
        let i = s
            .ops
            .iter()
            .position(|o| o.kind == kind && o.completed.is_some())?;
        let c = s.ops[i].completed.as_ref()?;
        if c.function != request.function() || c.input != *input {
            return None;
        }
        match (out.buffer, out.len) {
            (false, Some(_)) => Some(Response::Output {
                rv: wire(CKR_OK),
                len: c.len,
                data: Vec::new(),
            }),
            (true, Some(n)) if n >= c.len => {
                let c = s.ops.remove(i).completed?;
                Some(Response::Output {
                    rv: c.rv,
                    len: c.out_len,
                    data: c.data,
                })
            }
            // A NULL length pointer, a smaller buffer: the vendor decides.
            _ => None,
        }
    }

    /// Whether session `session` (the shim's handle) has an operation the vendor ended ahead
    /// of the application (a completed size query, a search run to its end), which the
    /// vendor must get back before it answers another call on the session.
    pub fn vendor_ended_early(&self, session: u64) -> bool {
        self.sessions.get(&session).is_some_and(|s| {
            s.ops.iter().any(|o| {
                o.completed.is_some() || o.search.as_ref().is_some_and(|f| f.ended.is_some())
            })
        })
    }

    /// Whether `request`, on its session `session`, is one the shim may answer (the session
    /// has a completed size query, a search run ahead), or one that makes the values kept of
    /// completed C_GetAttributeValue size queries void.
    pub fn answers_ahead(&self, session: Option<u64>, request: &Request) -> bool {
        let on_session = session.is_some_and(|session| {
            self.attributes_ahead.contains_key(&session)
                || self.sessions.get(&session).is_some_and(|s| {
                    s.ops
                        .iter()
                        .any(|o| o.completed.is_some() || o.search.is_some())
                })
        });
        on_session || (!self.attributes_ahead.is_empty() && changes_attributes(request))
    }

    /// The answer to a C_GetAttributeValue from a completed size query ([`AttributesAhead`]),
    /// when it is that query's follow-up; drops what was kept when `request` makes it void.
    pub fn serve_attributes(&mut self, request: &mut Request) -> Option<Response> {
        if changes_attributes(request) {
            self.attributes_ahead.clear();
            return None;
        }
        let session = request.session_mut().copied()?;
        let kept = self.attributes_ahead.get(&session)?;
        let Request::GetAttributeValue {
            object,
            query: Array::Given(query),
            ..
        } = &*request
        else {
            self.attributes_ahead.remove(&session);
            return None;
        };
        let same = kept.object == *object
            && query.len() == kept.types.len()
            && query.iter().zip(&kept.types).all(|(q, ty)| q.ty == *ty);
        if same && query.iter().all(|q| q.want == Want::Len) {
            return Some(Response::Attributes {
                rv: wire(CKR_OK),
                values: kept.lengths.clone(),
            });
        }
        let fits = query
            .iter()
            .zip(&kept.lengths)
            .all(|(q, l)| matches!((&q.want, l), (Want::Buffer(n), AttrOut::Len(len)) if n >= len));
        let kept = self.attributes_ahead.remove(&session)?;
        (same && fits).then_some(Response::Attributes {
            rv: kept.rv,
            values: kept.values,
        })
    }

    /// C_FindObjects and C_FindObjectsFinal on a search run ahead (v2.40 §5.7.8, §5.7.9):
    /// handles from those fetched, as many as asked, or all that are left and the vendor's
    /// search gives the rest; the vendor's C_FindObjectsFinal answer, when it was made.
    /// `None` for any other call, or shape (NULL pointers), which the vendor answers.
    pub fn serve_search(&mut self, request: &mut Request) -> Option<Served> {
        let session = request.session_mut().copied()?;
        let s = self.sessions.get_mut(&session)?;
        let i = s.ops.iter().position(|o| o.search.is_some())?;
        match request {
            Request::FindObjects {
                max_count, outputs, ..
            } if outputs.has(0) && outputs.has(1) => {
                let search = s.ops[i].search.as_mut()?;
                let n = (*max_count).min(search.found.len() as u64) as usize;
                let handles: Vec<u64> = search.found.drain(..n).collect();
                if n as u64 == *max_count || search.ended.is_some() {
                    Some(Served::All(Response::Ulongs {
                        rv: wire(CKR_OK),
                        count: n as u64,
                        values: handles,
                    }))
                } else {
                    *max_count -= n as u64;
                    Some(Served::Part(handles))
                }
            }
            Request::FindObjectsFinal { .. } => {
                let ended = s.ops[i].search.as_ref()?.ended?;
                s.ops.remove(i);
                Some(Served::All(Response::Rv(ended)))
            }
            _ => None,
        }
    }

    /// Whether the application was on `instance` once and left it.
    pub fn has_left(&self, instance: &InstanceId) -> bool {
        self.left.contains(instance)
    }

    /// A session handle for the server's `real`: its number if free.
    fn allocate_session(&mut self, real: u64) -> u64 {
        free_handle(&self.sessions, real, &mut self.next_own)
    }

    /// An object handle for the server's `real`: its number if free. Sessions and objects are
    /// numbered apart, as vendor libraries may do.
    fn allocate_object(&mut self, real: u64) -> u64 {
        free_handle(&self.objects, real, &mut self.next_own)
    }

    /// The slot of one of the shim's sessions.
    pub fn session_slot(&self, session: u64) -> Option<u64> {
        self.sessions.get(&session).map(|s| s.slot)
    }

    /// Replaces the shim's handles in `request` by the current server's, returning the shim's
    /// to restore before a retry. A session that was lost answers CKR_SESSION_HANDLE_INVALID,
    /// an object that was lost (a session object, or a token object not found again after a
    /// restart) CKR_OBJECT_HANDLE_INVALID. A session the shim never handed out travels as
    /// CK_INVALID_HANDLE (0, never a session: v2.40 §2.3), an object as it is, so the vendor
    /// library gives its own answer to it, in its own order of checks.
    pub fn to_server(&self, request: &mut Request) -> Rv<Shimmed> {
        let mut shimmed = Shimmed::default();
        if let Some(session) = request.session_mut() {
            shimmed.session = Some(*session);
            *session = match self.sessions.get(session) {
                Some(SessionRecord { real: Some(r), .. }) => *r,
                Some(SessionRecord { real: None, .. }) => return Err(CKR_SESSION_HANDLE_INVALID),
                None => wire(CK_INVALID_HANDLE),
            };
        }
        for (i, object) in request.object_handles_mut().into_iter().enumerate() {
            if let Some(object) = object {
                shimmed.objects[i] = Some(*object);
                *object = self.object_to_server(*object)?;
            }
        }
        if let Some(bytes) = param_key_mut(request) {
            let h = handle_in(bytes);
            shimmed.param_key = Some(h);
            let real = narrow(self.object_to_server(h)?)?;
            bytes.copy_from_slice(&real.to_ne_bytes());
        }
        Ok(shimmed)
    }

    fn object_to_server(&self, object: u64) -> Rv<u64> {
        match self.objects.get(&object) {
            Some(ObjectRecord { real: Some(r), .. }) => Ok(*r),
            Some(_) => Err(CKR_OBJECT_HANDLE_INVALID),
            None => Ok(object),
        }
    }

    /// The shim's object handles in `request` that wait to be found again on the current
    /// server (no session of their token was open when the application moved to it), with
    /// their identifying attributes.
    pub fn pending_in(&self, request: &mut Request) -> Vec<(u64, Vec<Attribute>)> {
        let mut pending = Vec::new();
        let mut check = |v: u64| {
            if let Some(ObjectRecord {
                real: None,
                identity: Some(identity),
                ..
            }) = self.objects.get(&v)
            {
                pending.push((v, identity.clone()));
            }
        };
        for h in request.object_handles_mut().into_iter().flatten() {
            check(*h);
        }
        if let Some(bytes) = param_key_mut(request) {
            check(handle_in(bytes));
        }
        pending
    }

    /// The one object waiting to be found again on `slot` whose identity is `identity`.
    fn pending_as(&self, slot: u64, identity: &[Attribute]) -> Option<u64> {
        let key = |a: &[Attribute]| {
            let mut v = a.to_vec();
            v.sort_by_key(|a| a.ty);
            v
        };
        let wanted = key(identity);
        let mut matches = self.objects.iter().filter(|(_, o)| {
            o.real.is_none()
                && o.slot == slot
                && o.identity.as_deref().is_some_and(|id| key(id) == wanted)
        });
        match (matches.next(), matches.next()) {
            (Some((v, _)), None) => Some(*v),
            _ => None,
        }
    }

    /// The current server's handle of one of the shim's sessions.
    pub fn session_real(&self, session: u64) -> Option<u64> {
        self.sessions.get(&session).and_then(|s| s.real)
    }

    /// An object that cannot be found again: its handle answers CKR_OBJECT_HANDLE_INVALID.
    pub fn lose_object(&mut self, object: u64) {
        self.resolve_object(object, None);
        if let Some(o) = self.objects.get_mut(&object) {
            o.identity = None;
        }
    }

    /// Puts the shim's handles back into `request` (before translating it again for another
    /// server).
    pub fn restore(request: &mut Request, shimmed: &Shimmed) {
        if let (Some(s), Some(v)) = (request.session_mut(), shimmed.session) {
            *s = v;
        }
        for (object, v) in request
            .object_handles_mut()
            .into_iter()
            .zip(shimmed.objects)
        {
            if let (Some(o), Some(v)) = (object, v) {
                *o = v;
            }
        }
        if let (Some(bytes), Some(v)) = (param_key_mut(request), shimmed.param_key) {
            let v: CK_OBJECT_HANDLE = narrow(v).unwrap_or(CK_INVALID_HANDLE);
            bytes.copy_from_slice(&v.to_ne_bytes());
        }
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
                    && !self.by_real.contains_key(*h)
            })
            .map(|(_, h)| *h)
            .collect()
    }

    /// Records a server object handle handed to the application and returns the shim's.
    pub fn add_object(
        &mut self,
        real: u64,
        slot: u64,
        identity: Option<Vec<Attribute>>,
        owner: Option<u64>,
    ) -> u64 {
        if let Some(v) = self.by_real.get(&real) {
            return *v;
        }
        let v = self.allocate_object(real);
        self.objects.insert(
            v,
            ObjectRecord {
                real: Some(real),
                slot,
                identity,
                owner,
                recheck: false,
            },
        );
        self.by_real.insert(real, v);
        v
    }

    /// Marks the token objects of `slot` for a check after a replayed login.
    pub fn recheck_objects(&mut self, slot: u64) {
        for o in self.objects.values_mut() {
            if o.slot == slot && o.identity.is_some() {
                o.recheck = true;
            }
        }
    }

    /// Points one of the shim's object handles at a server handle (after a restart).
    pub fn resolve_object(&mut self, object: u64, real: Option<u64>) {
        if let Some(o) = self.objects.get_mut(&object) {
            o.recheck = false;
            if let Some(old) = o.real.take() {
                self.by_real.remove(&old);
            }
            o.real = real;
            if let Some(r) = real {
                self.by_real.insert(r, object);
            }
        }
    }

    /// After the answer: records what the call changed and turns the server's handles in the
    /// response into the shim's. `request` is in its server form, `shimmed` holds the shim's
    /// handles, `init` the Init request in the shim's form (for C_*Init), `identities` the
    /// identifying attributes read for new object handles (see [`Journal::new_objects`]).
    pub fn after(
        &mut self,
        request: &Request,
        shimmed: &Shimmed,
        init: Option<Request>,
        response: Response,
        keep_pin: bool,
        identities: Vec<Identity>,
    ) -> Response {
        // A completed size query: the application sees the size query's answer; the real
        // call's is kept with the operation.
        let (response, completed) = match response {
            Response::Completed {
                len,
                rv,
                out_len,
                data,
            } => (
                Response::Output {
                    rv: wire(CKR_OK),
                    len,
                    data: Vec::new(),
                },
                single_part(request).map(|(_, input, _)| Completed {
                    function: request.function(),
                    input: input.clone(),
                    len,
                    rv,
                    out_len,
                    data,
                }),
            ),
            Response::AttributesCompleted {
                lengths,
                rv,
                values,
            } => {
                if let (Some(session), Some(object), Request::GetAttributeValue { query, .. }) =
                    (shimmed.session, shimmed.objects[0], request)
                {
                    let types = match query {
                        Array::Given(q) => q.iter().map(|q| q.ty).collect(),
                        Array::Null(_) => Vec::new(),
                    };
                    self.attributes_ahead.insert(
                        session,
                        AttributesAhead {
                            object,
                            types,
                            lengths: lengths.clone(),
                            rv,
                            values,
                        },
                    );
                }
                (
                    Response::Attributes {
                        rv: wire(CKR_OK),
                        values: lengths,
                    },
                    None,
                )
            }
            r => (r, None),
        };
        let rv = response.rv();
        let session = shimmed.session;
        match request {
            Request::OpenSession { slot, flags, .. } => {
                if let Response::Handle(real) = response {
                    let v = self.allocate_session(real);
                    self.sessions.insert(
                        v,
                        SessionRecord {
                            slot: *slot,
                            flags: *flags,
                            real: Some(real),
                            ops: Vec::new(),
                            closing: false,
                        },
                    );
                    return Response::Handle(v);
                }
            }
            Request::CloseSession { .. } => {
                if matches!(rv, CKR_OK | CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED) {
                    if let Some(v) = session {
                        self.drop_owned(&[v]);
                    }
                    if let Some(s) = session.and_then(|s| self.sessions.remove(&s)) {
                        // Closing the application's last session on a token logs it out
                        // (v2.40 §5.6.2, §6.7.3).
                        if !self.sessions.values().any(|o| o.slot == s.slot) {
                            self.logins.remove(&s.slot);
                        }
                    }
                }
            }
            Request::CloseAllSessions { slot } if rv == CKR_OK => {
                let closed: Vec<u64> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.slot == *slot)
                    .map(|(v, _)| *v)
                    .collect();
                self.drop_owned(&closed);
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
            // Fabric sets CKA_ID and CKA_LABEL to the SKI after generating a key: the identity
            // follows.
            Request::SetAttributeValue { template, .. } if rv == CKR_OK => {
                let record = shimmed.objects[0].and_then(|v| self.objects.get_mut(&v));
                if let Some(identity) = record.and_then(|o| o.identity.as_mut()) {
                    for new in template.iter().filter(|a| objects::is_identifying(a.ty)) {
                        identity.retain(|old| old.ty != new.ty);
                        identity.push(new.clone());
                    }
                }
            }
            Request::DestroyObject { .. } if rv == CKR_OK => {
                let removed = shimmed.objects[0].and_then(|v| self.objects.remove(&v));
                if let Some(r) = removed.and_then(|o| o.real) {
                    self.by_real.remove(&r);
                }
            }
            _ => {}
        }
        if let Some(s) = session.and_then(|s| self.sessions.get_mut(&s)) {
            match request.descriptor().step {
                Step::Init(kind) if rv == CKR_OK => {
                    s.ops.retain(|o| o.kind != kind);
                    if let Some(init) = init {
                        s.ops.push(OpRecord {
                            kind,
                            init,
                            fresh: true,
                            completed: None,
                            search: None,
                        });
                    }
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
        let response = self.objects_to_shim(request, response, session, identities);
        match response {
            // A search run ahead: the application sees C_FindObjectsInit's answer.
            Response::Found {
                objects,
                find_rv,
                final_rv,
            } => {
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
                    });
                }
                Response::Rv(wire(CKR_OK))
            }
            r => r,
        }
    }

    /// The session objects `session` made are gone (the server lost the session): their
    /// handles answer CKR_OBJECT_HANDLE_INVALID until the application closes the session.
    pub fn lose_owned(&mut self, session: u64) {
        let owned: Vec<u64> = self
            .objects
            .iter()
            .filter(|(_, o)| o.owner == Some(session))
            .map(|(v, _)| *v)
            .collect();
        for v in owned {
            self.lose_object(v);
        }
    }

    /// Forgets the session objects the given sessions made (closing them destroyed them).
    fn drop_owned(&mut self, sessions: &[u64]) {
        let by_real = &mut self.by_real;
        self.objects.retain(|_, o| {
            let owned = o.owner.is_some_and(|s| sessions.contains(&s));
            if owned {
                if let Some(r) = o.real {
                    by_real.remove(&r);
                }
            }
            !owned
        });
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
    pub fn closing(&mut self, request: &Request, shimmed: &Shimmed) {
        match request {
            Request::CloseSession { .. } => {
                if let Some(s) = shimmed.session.and_then(|v| self.sessions.get_mut(&v)) {
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
        session: Option<u64>,
        identities: Vec<Identity>,
    ) -> Response {
        let Some(handout) = Handout::of(request) else {
            return response;
        };
        let slot = session.and_then(|s| self.session_slot(s)).unwrap_or(0);
        let mut identities: HashMap<u64, Option<Vec<Attribute>>> = identities
            .into_iter()
            .map(|i| (i.object, i.attributes))
            .collect();
        for (i, h) in handout.objects(&mut response).into_iter().enumerate() {
            if *h == wire(CK_INVALID_HANDLE) {
                continue;
            }
            *h = match self.by_real.get(h) {
                Some(v) => *v,
                None => {
                    let identity = identities.remove(h).flatten();
                    // An object the application held before a restart, handed out again.
                    match identity.as_ref().and_then(|id| self.pending_as(slot, id)) {
                        Some(v) => {
                            self.resolve_object(v, Some(*h));
                            v
                        }
                        None => {
                            let owner = session.filter(|_| handout.makes_session_object(i));
                            self.add_object(*h, slot, identity, owner)
                        }
                    }
                }
            };
        }
        response
    }

    /// A new server instance: every server handle is void. Object handles keep their records
    /// (token objects are found again); sessions are reopened by the caller.
    pub fn switch_instance(&mut self, instance: InstanceId) {
        if self.instance != [0; 16] && self.instance != instance {
            if self.left.len() == LEFT_KEPT {
                self.left.pop_front();
            }
            self.left.push_back(self.instance);
        }
        self.instance = instance;
        self.epoch += 1;
        self.by_real.clear();
        for o in self.objects.values_mut() {
            o.real = None;
        }
        for s in self.sessions.values_mut() {
            s.real = None;
        }
    }

    /// Forgets everything (C_Finalize); kept PINs are wiped as they drop.
    pub fn clear(&mut self) {
        self.sessions.clear();
        self.objects.clear();
        self.by_real.clear();
        self.logins.clear();
    }
}

/// `real` if no entry of `taken` has that number, else the next free number of the shim's own.
fn free_handle<T>(taken: &HashMap<u64, T>, real: u64, next_own: &mut u64) -> u64 {
    if real != 0 && !taken.contains_key(&real) {
        return real;
    }
    loop {
        let h = *next_own;
        *next_own = next_own.checked_add(1).unwrap_or(OWN_HANDLES);
        if !taken.contains_key(&h) {
            return h;
        }
    }
}

/// Whether `request` may change what C_GetAttributeValue answers for an object the
/// application holds: the object changed or destroyed, the token changed, a login or logout
/// (private objects are visible only while logged in, v2.40 §6.7), a session closed (its
/// session objects with it).
fn changes_attributes(request: &Request) -> bool {
    let d = request.descriptor();
    d.changes_token || d.changes_view
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::attribute::AttrValue;
    use protocol::mechanism::{MechParam, Mechanism};
    use protocol::shape::{Out, Outputs};

    const A: InstanceId = [1; 16];
    const B: InstanceId = [2; 16];

    /// Sends `request` through the journal to a server that answers `response`.
    fn exchange(j: &mut Journal, mut request: Request, response: Response) -> Rv<Response> {
        let init = is_init(&request).then(|| request.clone());
        let shimmed = j.to_server(&mut request)?;
        Ok(j.after(&request, &shimmed, init, response, true, vec![]))
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
    fn handles_are_the_servers_until_a_number_is_taken() {
        let mut j = Journal::new(A);
        assert_eq!(open(&mut j, 1), 1);
        j.switch_instance(B);
        // The new server's session 1 must not take the place of the lost session 1.
        let second = open(&mut j, 1);
        assert_ne!(second, 1);
        let mut r = Request::GetSessionInfo {
            session: 1,
            outputs: Outputs::ALL,
        };
        assert_eq!(j.to_server(&mut r).unwrap_err(), CKR_SESSION_HANDLE_INVALID);
        // A number never handed out is the vendor's to judge, as CK_INVALID_HANDLE.
        let mut r = Request::GetSessionInfo {
            session: 77,
            outputs: Outputs::ALL,
        };
        j.to_server(&mut r).unwrap();
        assert_eq!(r.session_mut().copied(), Some(0));
        let mut r = Request::GetSessionInfo {
            session: second,
            outputs: Outputs::ALL,
        };
        j.to_server(&mut r).unwrap();
        assert_eq!(
            r,
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
        let key = j.add_object(7, 0, Some(vec![]), None);
        let session_object = j.add_object(8, 0, None, Some(s));
        assert_eq!((key, session_object), (7, 8));
        j.switch_instance(B);
        j.sessions.get_mut(&s).unwrap().real = Some(3);
        j.resolve_object(key, Some(9));
        let mut r = sign_init(s, key);
        j.to_server(&mut r).unwrap();
        assert_eq!(r, sign_init(3, 9));
        let mut r = sign_init(s, session_object);
        assert_eq!(j.to_server(&mut r).unwrap_err(), CKR_OBJECT_HANDLE_INVALID);
        // Never handed out: the vendor library judges it.
        let mut r = sign_init(s, 1234);
        j.to_server(&mut r).unwrap();
        assert_eq!(r, sign_init(3, 1234));
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
        let key = j.add_object(7, 0, Some(id(b"a")), None);
        j.add_object(8, 0, Some(id(b"b")), None);
        j.switch_instance(B);
        j.sessions.get_mut(&s).unwrap().real = Some(1);
        let mut r = sign_init(s, key);
        assert_eq!(j.pending_in(&mut r), vec![(key, id(b"a"))]);
        // The new server's handle 20 has key's identity (attributes in another order).
        let mut reversed = id(b"a");
        reversed.reverse();
        let find = |j: &mut Journal, real: u64, identity: Vec<Attribute>| {
            let mut request = Request::FindObjects {
                session: s,
                max_count: 1,
                outputs: Outputs::ALL,
            };
            let shimmed = j.to_server(&mut request).unwrap();
            j.after(
                &request,
                &shimmed,
                None,
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
        assert!(j.pending_in(&mut sign_init(s, key)).is_empty());
        // An object never seen before gets a handle of its own.
        let found = find(&mut j, 21, id(b"c"));
        assert!(matches!(found, Response::Ulongs { values, .. } if values == vec![21]));
    }

    #[test]
    fn a_concatenated_key_parameter_is_translated_too() {
        let mut j = Journal::new(A);
        let s = open(&mut j, 1);
        let key = j.add_object(5, 0, Some(vec![]), None);
        j.switch_instance(B);
        j.sessions.get_mut(&s).unwrap().real = Some(1);
        j.resolve_object(key, Some(6));
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
        let mut r = derive(key, 5);
        let shimmed = j.to_server(&mut r).unwrap();
        assert_eq!(r, derive(6, 6));
        Journal::restore(&mut r, &shimmed);
        assert_eq!(r, derive(key, 5));
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
        assert_eq!(j.objects.len(), 2);
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
        assert_eq!(j.objects.keys().collect::<Vec<_>>(), [&11]);
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
