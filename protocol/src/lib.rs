//! Wire protocol of the PKCS#11 proxy: framing, handshake, and one request/response message per
//! PKCS#11 function.
//!
//! Rules (see `DESIGN.md`, "Wire protocol rules"):
//! - every frame is a 4-byte little-endian length followed by that many bytes, at most
//!   [`frame::MAX_FRAME_LEN`], checked before anything is allocated;
//! - the first exchange on a connection is the [`handshake`], with a magic value and a version;
//! - every `CK_ULONG` of C is a `u64` here; each side converts to its own width with a checked
//!   conversion;
//! - attribute values and mechanism parameters are typed ([`attribute`], [`mechanism`]) so that
//!   both ends may differ in width and endianness.
//!
//! This crate does no I/O policy and names no C type (plain integers and owned buffers only),
//! but in the two small modules both sides convert with: [`ulong`] and [`c_layout`]. It reads
//! cryptoki-sys's constants for one thing: the [`names`] of numbers in logs and traces.

pub mod address;
pub mod attribute;
pub mod c_layout;
pub mod codec;
pub mod error;
pub mod frame;
pub mod function;
#[doc(hidden)]
pub mod fuzzing;
pub mod glibc;
pub mod handshake;
pub mod mechanism;
pub mod message;
pub mod names;
pub mod objects;
pub mod shape;
pub mod stream;
pub mod trace;
pub mod ulong;

pub use error::ProtocolError;
