//! A call trace for people (OpenSC's pkcs11-spy is the model): one line per PKCS#11 call with
//! its arguments and its answer as an operator needs them to find what failed: handles and
//! numbers as they are, mechanisms and attributes by name, byte strings by their length, a
//! PIN as `***`. Never the bytes of a PIN, a key, data or a parameter: a trace is sent to
//! support and pasted into tickets.

use crate::attribute::{AttrQuery, AttrValue, Attribute, Want};
use crate::handshake::InitArgs;
use crate::mechanism::{MechParam, Mechanism, MsgParam};
use crate::message::Pin;
use crate::names;
use crate::shape::{Array, Out, Outputs};

/// How a value reads in a trace (nothing at all for values without interest).
pub trait Traced {
    fn trace(&self, out: &mut String);
}

/// Appends `name=value` to a list of arguments (nothing when the value writes nothing).
pub fn argument(out: &mut String, name: &str, value: &impl Traced) {
    let start = out.len();
    if start > 0 {
        out.push_str(", ");
    }
    out.push_str(name);
    out.push('=');
    let mark = out.len();
    value.trace(out);
    if out.len() == mark {
        out.truncate(start);
    }
}

impl Traced for u64 {
    fn trace(&self, out: &mut String) {
        out.push_str(&self.to_string());
    }
}

/// Handles (the shim's own requests about objects).
impl Traced for Vec<u64> {
    fn trace(&self, out: &mut String) {
        items_of(out, self, |o, h| h.trace(o));
    }
}

impl Traced for bool {
    fn trace(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" });
    }
}

/// Bytes by their length: `32 bytes`, or `NULL/32` for a NULL pointer with a length of 32.
impl Traced for Array<u8> {
    fn trace(&self, out: &mut String) {
        match self {
            Array::Null(n) => out.push_str(&format!("NULL/{n}")),
            Array::Given(v) => out.push_str(&format!("{} bytes", v.len())),
        }
    }
}

/// A template: `[CKA_CLASS=3, CKA_SIGN=true, CKA_ID(20 bytes)]`.
impl Traced for Array<Attribute> {
    fn trace(&self, out: &mut String) {
        list(out, self, |out, a| a.trace(out));
    }
}

/// The attributes asked for: `[CKA_EC_POINT?, CKA_ID(20)]` (a length query, a buffer).
impl Traced for Array<AttrQuery> {
    fn trace(&self, out: &mut String) {
        list(out, self, |out, q| q.trace(out));
    }
}

fn list<T>(out: &mut String, array: &Array<T>, each: impl Fn(&mut String, &T)) {
    match array {
        Array::Null(n) => out.push_str(&format!("NULL/{n}")),
        Array::Given(items) => items_of(out, items, each),
    }
}

fn items_of<T>(out: &mut String, items: &[T], each: impl Fn(&mut String, &T)) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        each(out, item);
    }
    out.push(']');
}

fn attribute_name(out: &mut String, ty: u64) {
    out.push_str(&names::or_hex(names::attribute(ty), ty));
}

/// Booleans and numbers (classes, key types) are never secret and show; byte strings and
/// dates show their length.
impl Traced for Attribute {
    fn trace(&self, out: &mut String) {
        attribute_name(out, self.ty);
        match &self.value {
            AttrValue::Bool(b) => out.push_str(&format!("={b}")),
            AttrValue::Ulong(v) => out.push_str(&format!("={v:#x}")),
            AttrValue::Date(_) => out.push_str("(date)"),
            AttrValue::UlongArray(v) => out.push_str(&format!("({} values)", v.len())),
            AttrValue::Template(t) => items_of(out, t, |o, a| a.trace(o)),
            AttrValue::Bytes(v) => out.push_str(&format!("({} bytes)", v.len())),
            AttrValue::Null(n) => out.push_str(&format!("(NULL/{n})")),
        }
    }
}

impl Traced for AttrQuery {
    fn trace(&self, out: &mut String) {
        attribute_name(out, self.ty);
        match &self.want {
            Want::Len => out.push('?'),
            Want::Buffer(n) => out.push_str(&format!("({n})")),
            Want::Template(t) => items_of(out, t, |o, q| q.trace(o)),
        }
    }
}

/// `CKM_ECDSA`, with `(+param)` when it has a parameter (its bytes never show).
impl Traced for Mechanism {
    fn trace(&self, out: &mut String) {
        match self.param {
            MechParam::Absent => out.push_str("NULL"),
            MechParam::None => out.push_str(&names::or_hex(names::mechanism(self.ty), self.ty)),
            _ => {
                out.push_str(&names::or_hex(names::mechanism(self.ty), self.ty));
                out.push_str("(+param)");
            }
        }
    }
}

impl Traced for MsgParam {
    fn trace(&self, out: &mut String) {
        if !matches!(self, MsgParam::None) {
            out.push_str("given");
        }
    }
}

/// The caller's output buffer (v2.40 §5.2): `NULL` for a size query, `buffer(72)` for a
/// buffer of 72.
impl Traced for Out {
    fn trace(&self, out: &mut String) {
        match (self.buffer, self.len) {
            (false, _) => out.push_str("NULL"),
            (true, Some(n)) => out.push_str(&format!("buffer({n})")),
            (true, None) => out.push_str("buffer(NULL length)"),
        }
    }
}

/// Which output structures the caller gave: of no interest to a reader.
impl Traced for Outputs {
    fn trace(&self, _: &mut String) {}
}

/// Never the PIN: `***`, or `NULL` (protected authentication path).
impl Traced for Pin {
    fn trace(&self, out: &mut String) {
        out.push_str(if self.is_some() { "***" } else { "NULL" });
    }
}

impl Traced for Option<InitArgs> {
    fn trace(&self, out: &mut String) {
        match self {
            None => out.push_str("NULL"),
            Some(a) => out.push_str(&format!("flags {:#x}", a.flags)),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::attribute::{AttrValue, Attribute};
    use crate::mechanism::{MechParam, Mechanism};
    use crate::message::{Request, Response};
    use crate::shape::{Array, Out, Outputs};

    #[test]
    fn a_call_reads_with_names_and_lengths() {
        let init = Request::SignInit {
            session: 3,
            mechanism: Mechanism {
                ty: 0x1041,
                param: MechParam::None,
            },
            key: 7,
        };
        assert_eq!(
            init.trace_arguments(),
            "session=3, mechanism=CKM_ECDSA, key=7"
        );
        let sign = Request::Sign {
            session: 3,
            data: Array::Given(vec![0x42; 32]),
            capacity: Out::query(0),
        };
        assert_eq!(
            sign.trace_arguments(),
            "session=3, data=32 bytes, capacity=NULL"
        );
        let answer = Response::Output {
            rv: 0,
            len: 72,
            data: vec![],
        };
        assert_eq!(answer.trace_answer(), "72 bytes");
        assert_eq!(Response::Handle(9).trace_answer(), "handle 9");
    }

    #[test]
    fn no_pin_key_or_data_byte_ever_shows() {
        let login = Request::Login {
            session: 1,
            user_type: 1,
            pin: Some(b"73 secret 91".to_vec().into()),
        };
        let line = login.trace_arguments();
        assert_eq!(line, "session=1, user_type=1, pin=***");
        let create = Request::CreateObject {
            session: 1,
            template: Array::Given(vec![
                Attribute {
                    ty: 0x0, // CKA_CLASS
                    value: AttrValue::Ulong(4),
                },
                Attribute {
                    ty: 0x11, // CKA_VALUE
                    value: AttrValue::Bytes(b"KEYBYTES-KEYBYTES".to_vec()),
                },
                Attribute {
                    ty: 0x108, // CKA_SIGN
                    value: AttrValue::Bool(true),
                },
            ]),
            outputs: Outputs::ALL,
        };
        let line = create.trace_arguments();
        assert_eq!(
            line,
            "session=1, template=[CKA_CLASS=0x4, CKA_VALUE(17 bytes), CKA_SIGN=true]"
        );
        assert!(!line.contains("KEYBYTES"));
    }
}
