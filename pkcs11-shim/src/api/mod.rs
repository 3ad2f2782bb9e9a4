//! The exported `C_*` functions, one file per chapter of the PKCS#11 v2.40 specification
//! (§5.4 to §5.15), plus the v3.0 additions. Each is a thin shell: read the C arguments, build
//! the request, call the server, write the results back.

pub mod crypto;
pub mod general;
pub mod key;
pub mod object;
pub mod session;
pub mod slot;
pub mod v3;
