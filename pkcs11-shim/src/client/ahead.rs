//! Answers the server gave ahead of the application (DESIGN.md, "Two-call functions"): the
//! real call after a size query it was asked to complete, a C_GetAttributeValue's values
//! after its lengths, the first handles of a search. Each is kept until the application's
//! follow-up, which it answers with no round trip, or until another call makes it void.
//!
//! This module knows what such an answer is and which follow-up it answers; where it is kept
//! (with the session's operation) is the [`super::journal`]'s business.

use std::collections::{HashMap, VecDeque};

use cryptoki_sys::*;
use protocol::attribute::{AttrOut, Want};
use protocol::function::{OpKind, Step};
use protocol::message::{Function, Request, Response};
use protocol::shape::{Array, Bytes, Out};

use crate::ffi::wire;

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

/// The real call the server made after a size query it was asked to complete: the vendor
/// has ended the operation; the application, which saw only the size query, has not. Its
/// follow-up (the same function and input, a buffer of at least `len`) is answered from
/// here; any other call on the session first gets the operation back on the vendor by
/// replaying its Init (it had taken no data: a single-part size query leaves nothing
/// behind), so that the vendor answers it.
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

/// What a [`Completed`] size query answers to a follow-up.
pub enum FollowUp {
    /// The size again (a NULL buffer): [`Completed::size_answer`].
    Size,
    /// The result: the operation ends ([`Completed::into_answer`]).
    Result,
}

impl Completed {
    /// What it answers to `request` (with the shim's handles), when it is the size query's
    /// follow-up: the same function and input, and a NULL buffer (the size again) or one of
    /// at least the size the vendor gave (v2.40 §5.2). `None` for anything else, which the
    /// vendor answers.
    pub fn follow_up(&self, request: &Request) -> Option<FollowUp> {
        let (_, input, out) = single_part(request)?;
        if self.function != request.function() || self.input != *input {
            return None;
        }
        match (out.buffer, out.len) {
            (false, Some(_)) => Some(FollowUp::Size),
            (true, Some(n)) if n >= self.len => Some(FollowUp::Result),
            // A NULL length pointer, a smaller buffer: the vendor decides.
            _ => None,
        }
    }

    /// The size query's answer, again.
    pub fn size_answer(&self) -> Response {
        Response::Output {
            rv: wire(CKR_OK),
            len: self.len,
            data: Vec::new(),
        }
    }

    /// The real call's answer.
    pub fn into_answer(self) -> Response {
        Response::Output {
            rv: self.rv,
            len: self.out_len,
            data: self.data,
        }
    }
}

/// A search the server ran ahead of the application (the rule of two-call functions applied
/// to C_FindObjects): the first handles were fetched with C_FindObjectsInit, and, when they
/// were all there is, the vendor's search was ended with C_FindObjectsFinal. C_FindObjects is
/// answered from `found`, then by the vendor when its search goes on; C_FindObjectsFinal with
/// the vendor's own answer. Any other call on the session first gets the vendor's search back
/// where it was (Init and the same C_FindObjects replayed), so that the vendor answers it.
#[derive(Debug, Clone)]
pub struct Search {
    /// The shim's handles found and not yet handed to the application.
    pub found: VecDeque<u64>,
    /// How many handles the prefetch asked for.
    pub asked: u64,
    /// The vendor's C_FindObjectsFinal answer, when the prefetch ended its search; `None`:
    /// the vendor's search goes on.
    pub ended: Option<u64>,
    /// A C_FindObjects the shim cannot serve (a NULL pointer) came: the vendor gets the
    /// search back where the application's is (the handles served so far consumed) and
    /// answers from then on, since what a failed C_FindObjects does to a search is the
    /// vendor's (SoftHSM2 keeps it, kryoptic ends it).
    pub give_back: bool,
    /// How many of the handles fetched the application has had.
    pub served: u64,
}

/// What a search run ahead answers of a C_FindObjects.
pub enum Served {
    /// The whole answer.
    All(Response),
    /// These handles first; the vendor's search gives the rest (the request asks for fewer
    /// now).
    Part(Vec<u64>),
}

impl Search {
    /// C_FindObjects and C_FindObjectsFinal on this search (v2.40 §5.7.8, §5.7.9): handles
    /// from those fetched ([`Search::serve`]); the vendor's C_FindObjectsFinal answer, when it
    /// was made (and `true`: the search is over). `None` for any other call, or a
    /// C_FindObjects with a NULL pointer, which the vendor answers once it has the search
    /// back ([`Search::give_back`]).
    pub fn answer(&mut self, request: &mut Request) -> Option<(Served, bool)> {
        match request {
            Request::FindObjects {
                max_count, outputs, ..
            } if outputs.has(0) && outputs.has(1) => Some((self.serve(max_count), false)),
            Request::FindObjects { .. } => {
                self.give_back = true;
                None
            }
            Request::FindObjectsFinal { .. } => {
                Some((Served::All(Response::Rv(self.ended?)), true))
            }
            _ => None,
        }
    }

    /// C_FindObjects (v2.40 §5.7.8) for `max_count` handles: from those fetched, as many as
    /// asked, or all that are left and the vendor's search gives the rest (`max_count` is
    /// then what it still asks).
    pub fn serve(&mut self, max_count: &mut u64) -> Served {
        let n = (*max_count).min(self.found.len() as u64) as usize;
        let handles: Vec<u64> = self.found.drain(..n).collect();
        self.served += n as u64;
        if n as u64 == *max_count || self.ended.is_some() {
            Served::All(Response::Ulongs {
                rv: wire(CKR_OK),
                count: n as u64,
                values: handles,
            })
        } else {
            *max_count -= n as u64;
            Served::Part(handles)
        }
    }
}

/// The answer to a C_FindObjects of which a search run ahead gave `prefix` (the first
/// handles) and the vendor the rest.
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

/// The real C_GetAttributeValue the server made after a size query it was asked to
/// complete. The follow-up (same object, same attributes in the same order, each with a
/// buffer of at least its length, or the lengths asked again) is answered from here.
/// Nothing is left on the vendor (attributes are no operation), so any other call on the
/// session simply drops it, and so does any call that may change what the vendor answers for
/// the object ([`changes_attributes`]).
#[derive(Debug, Clone)]
struct AttributesKept {
    /// The shim's handle of the object.
    object: u64,
    types: Vec<u64>,
    /// The size query's answer (its return value was CKR_OK).
    lengths: Vec<AttrOut>,
    /// The real call's answer.
    rv: u64,
    values: Vec<AttrOut>,
}

/// The completed C_GetAttributeValue size queries, by session (shim handle).
#[derive(Debug, Default)]
pub struct AttributesAhead {
    by_session: HashMap<u64, AttributesKept>,
}

impl AttributesAhead {
    /// Whether `session` has one kept, or `request` would make every one void.
    pub fn concern(&self, session: Option<u64>, request: &Request) -> bool {
        session.is_some_and(|s| self.by_session.contains_key(&s))
            || (!self.by_session.is_empty() && changes_attributes(request))
    }

    /// The answer to a C_GetAttributeValue (with the shim's handles) from a completed size
    /// query, when it is that query's follow-up; drops what was kept when `request` makes it
    /// void.
    pub fn serve(&mut self, request: &Request) -> Option<Response> {
        if changes_attributes(request) {
            self.by_session.clear();
            return None;
        }
        let session = request.session()?;
        let kept = self.by_session.get(&session)?;
        let Request::GetAttributeValue {
            object,
            query: Array::Given(query),
            ..
        } = request
        else {
            self.by_session.remove(&session);
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
        let kept = self.by_session.remove(&session)?;
        (same && fits).then_some(Response::Attributes {
            rv: kept.rv,
            values: kept.values,
        })
    }

    /// Forgets every one kept (C_Finalize).
    pub fn clear(&mut self) {
        self.by_session.clear();
    }
}

/// What the application sees of an answer given ahead, and what is kept of it: of a
/// completed size query, the size query's answer (its real call's answer returned, for the
/// caller to keep with the operation); of a completed C_GetAttributeValue, the lengths (its
/// values kept in `attributes`). `request` has the shim's handles. Other answers pass as they
/// are.
pub fn unwrap(
    request: &Request,
    response: Response,
    attributes: &mut AttributesAhead,
) -> (Response, Option<Completed>) {
    match response {
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
            if let (Some(session), Request::GetAttributeValue { object, query, .. }) =
                (request.session(), request)
            {
                let types = match query {
                    Array::Given(q) => q.iter().map(|q| q.ty).collect(),
                    Array::Null(_) => Vec::new(),
                };
                let kept = AttributesKept {
                    object: *object,
                    types,
                    lengths: lengths.clone(),
                    rv,
                    values,
                };
                attributes.by_session.insert(session, kept);
            }
            let lengths = Response::Attributes {
                rv: wire(CKR_OK),
                values: lengths,
            };
            (lengths, None)
        }
        r => (r, None),
    }
}

/// Whether `request` may change what C_GetAttributeValue answers for an object the
/// application holds: the object changed or destroyed, the token changed, a login or logout
/// (private objects are visible only while logged in, v2.40 §6.7), a session closed (its
/// session objects with it).
pub fn changes_attributes(request: &Request) -> bool {
    let d = request.descriptor();
    d.changes_token || d.changes_view
}
