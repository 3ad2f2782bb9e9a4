//! The exported `C_*` functions, one file per chapter of the PKCS#11 v2.40 specification
//! (§5.4 to §5.15; v3.0 adds C_LoginUser and C_SessionCancel to `session`), and `message`
//! for v3.0's message-based functions (§5.9 to §5.16): the chapters of the server's
//! `worker/dispatch/`. Each is a thin shell: read the C arguments, build the request, call
//! the server, write the results back.

pub mod crypto;
pub mod general;
pub mod key;
pub mod message;
pub mod object;
pub mod session;
pub mod slot;
