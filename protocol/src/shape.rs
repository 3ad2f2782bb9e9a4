//! The shape of a caller's pointer arguments, as the vendor library must see them
//! (DESIGN.md, "The vendor decides"): a NULL pointer stays NULL, with the count the caller gave;
//! a non-NULL pointer with a count of 0 stays non-NULL; a NULL output pointer reaches the
//! vendor as NULL. Argument errors are then the vendor's own, in its own order of checks
//! (PKCS#11 v2.40 §5.1: the order of checks is the library's; §5.2 the two-call convention).

use serde::{Deserialize, Serialize};

/// A caller's input array: data bytes, a template, a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Array<T> {
    /// A NULL pointer with this count (the vendor gets both as they were).
    Null(u64),
    /// A pointer to these elements; none is a non-NULL pointer with a count of 0.
    Given(Vec<T>),
}

/// Caller bytes (data, signatures, seeds, wrapped keys...).
pub type Bytes = Array<u8>;

impl<T> Array<T> {
    /// Whether the caller's pointer was NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Array::Null(_))
    }

    /// The count the caller gave: the elements' for a pointer, the bare count for NULL.
    pub fn count(&self) -> u64 {
        match self {
            Array::Null(n) => *n,
            Array::Given(v) => v.len() as u64,
        }
    }
}

impl<T> Default for Array<T> {
    /// A non-NULL pointer with a count of 0.
    fn default() -> Self {
        Array::Given(Vec::new())
    }
}

impl<T> std::ops::Deref for Array<T> {
    type Target = [T];
    /// The elements; none for a NULL pointer.
    fn deref(&self) -> &[T] {
        match self {
            Array::Null(_) => &[],
            Array::Given(v) => v,
        }
    }
}

impl<T> From<Vec<T>> for Array<T> {
    fn from(v: Vec<T>) -> Self {
        Array::Given(v)
    }
}

impl<T> FromIterator<T> for Array<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Array::Given(iter.into_iter().collect())
    }
}

impl<T: Clone> From<&[T]> for Array<T> {
    fn from(v: &[T]) -> Self {
        Array::Given(v.to_vec())
    }
}

/// A caller's two-call output (PKCS#11 v2.40 §5.2): whether the buffer pointer is NULL (a
/// size query), and the value the length pointer holds (`None`: the length pointer is NULL).
/// The vendor starts from the caller's value and may leave it as it is (on most errors).
///
/// `complete`, on a size query of a single-part function (C_Sign, C_Encrypt...): once the
/// vendor has answered the query with CKR_OK, the server makes the real call at once, with a
/// buffer of the length the vendor gave, and returns both answers
/// ([`crate::message::Response::Completed`]), so that the application's follow-up call costs
/// no round trip (DESIGN.md, "Two-call functions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Out {
    pub buffer: bool,
    pub len: Option<u64>,
    pub complete: bool,
}

impl Out {
    /// A buffer of `len` elements.
    pub fn buffer(len: u64) -> Self {
        Out {
            buffer: true,
            len: Some(len),
            complete: false,
        }
    }

    /// A size query: NULL buffer, a length pointer holding `len`.
    pub fn query(len: u64) -> Self {
        Out {
            buffer: false,
            len: Some(len),
            complete: false,
        }
    }

    /// Whether the server is to make the real call after a successful size query.
    pub fn completes(&self) -> bool {
        self.complete && !self.buffer && self.len.is_some()
    }

    /// Whether this is a size query (a NULL buffer).
    pub fn is_query(&self) -> bool {
        !self.buffer
    }

    /// The caller's buffer size in elements, when there is a buffer and a length pointer.
    pub fn capacity(&self) -> Option<u64> {
        self.len.filter(|_| self.buffer)
    }
}

/// Which of a function's single output pointers (phSession, pInfo, phKey, ...) the caller
/// gave: bit `i` set for the `i`-th output parameter in the C signature's order. The server
/// passes NULL for each one not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs(pub u8);

impl Outputs {
    /// Every output pointer given.
    pub const ALL: Outputs = Outputs(u8::MAX);

    /// From the NULL-ness of each output pointer, in order.
    pub fn of(given: &[bool]) -> Self {
        Outputs(
            given
                .iter()
                .enumerate()
                .fold(0, |m, (i, g)| if *g { m | 1 << i } else { m }),
        )
    }

    /// Whether output `i` was given.
    pub fn has(self, i: u8) -> bool {
        self.0 & (1 << i) != 0
    }
}

impl Default for Outputs {
    fn default() -> Self {
        Outputs::ALL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_survive_the_codec() {
        for a in [
            Bytes::Null(0),
            Bytes::Null(16),
            Bytes::default(),
            vec![1, 2].into(),
        ] {
            let mut wire = Vec::new();
            crate::codec::encode(&a, &mut wire).unwrap();
            let back: Bytes = crate::codec::decode(&wire).unwrap();
            assert_eq!(back, a);
            assert_eq!(back.is_null(), matches!(a, Array::Null(_)));
        }
        assert_eq!(Bytes::Null(16).count(), 16);
        assert!(Bytes::Null(16).is_empty());
        assert_eq!(Out::query(7).capacity(), None);
        assert_eq!(Out::buffer(7).capacity(), Some(7));
        let o = Outputs::of(&[true, false, true]);
        assert!(o.has(0) && !o.has(1) && o.has(2));
    }
}
