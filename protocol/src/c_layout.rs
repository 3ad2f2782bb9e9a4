//! C structures both sides must lay out alike that no binding provides (cryptoki-sys has only
//! the current headers): the shim reads them from the application's memory, the worker builds
//! them for the vendor library. Like [`crate::ulong`], the one place the protocol crate names
//! a C type.

use std::ffi::c_ulong;

/// `CK_GCM_PARAMS` as first published in the v2.40 headers, without `ulIvBits` (v2.40
/// Current Mechanisms, AES-GCM; the field came with the errata). Some HSMs, Thales Luna among
/// them, only accept this layout; the wire tells the two apart by
/// [`crate::mechanism::MechParam::Gcm`]'s `iv_bits` being `None`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GcmParamsNoIvBits {
    pub p_iv: *mut u8,
    pub ul_iv_len: c_ulong,
    pub p_aad: *mut u8,
    pub ul_aad_len: c_ulong,
    pub ul_tag_bits: c_ulong,
}
