//! `p11bench`: PKCS#11 throughput and latency of a module, the vendor library directly or the
//! shim (with `PKCS11_PROXY_SOCKET` set), so both figures come from the same command.
//!
//! ```text
//! p11bench --module PATH --pin 1234 --token-label LABEL \
//!     --op random|sign-ecdsa-p256|digest-sha256|find-object|fabric|fabric-endorse|sign-ml-dsa65 \
//!     --threads N --seconds S [--json]
//! ```
//! Each thread has its own session; what an operation needs (an EC P-256 key pair, a data
//! object) is created as session objects before timing. `sign-ecdsa-p256` is C_SignInit and
//! one C_Sign into a buffer of the right size; `fabric` is what a Fabric peer does per
//! endorsement: C_SignInit, then C_Sign twice (size query, then the signature);
//! `fabric-endorse` is Fabric 2.2's BCCSP sequence for one endorsement: the private key found
//! by CKA_ID (C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal), then `fabric`. The JSON
//! line carries the CPU time of this process per operation (`cpu_us_per_op`, user + system).
//! `sign-ml-dsa65` is `fabric` with an ML-DSA-65 key (PKCS#11 3.2; kryoptic): C_SignInit,
//! then C_Sign twice, a 3,309-byte signature.

use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use cryptoki_sys::*;
use tests::fabric::attr;
use tests::raw::RawModule;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Op {
    Random,
    SignEcdsaP256,
    DigestSha256,
    FindObject,
    Fabric,
    FabricEndorse,
    /// C_GetAttributeValue's two calls (lengths, then values) of CKA_EC_PARAMS and
    /// CKA_EC_POINT on a public key, as Fabric's BCCSP reads one.
    GetAttributes,
    /// `fabric` with a post-quantum key: ML-DSA-65 (PKCS#11 3.2 CKM_ML_DSA).
    SignMlDsa65,
}

#[derive(Parser, Debug)]
#[command(about = "PKCS#11 throughput and latency, direct or through the proxy")]
struct Args {
    #[arg(long)]
    module: String,
    #[arg(long)]
    pin: String,
    #[arg(long)]
    token_label: String,
    #[arg(long, value_enum)]
    op: Op,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const DIGEST: [u8; 32] = [0x42; 32];
const KEY_ID: &[u8] = b"p11bench-key";
const LABEL: &[u8] = b"p11bench-object";

fn mechanism(mechanism: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

/// `rv` as a result, naming the call that failed.
fn check(what: &str, rv: CK_RV) -> Result<(), String> {
    match rv {
        CKR_OK => Ok(()),
        rv => Err(format!("{what}: {rv:#x}")),
    }
}

/// The slot holding the token labelled `label` (padded with blanks to 32 bytes).
fn slot_of(m: &RawModule, label: &str) -> CK_SLOT_ID {
    let f = m.f();
    let mut slots = [0 as CK_SLOT_ID; 64];
    let mut n = slots.len() as CK_ULONG;
    // SAFETY: a buffer of n slots.
    let rv = unsafe { f.C_GetSlotList.unwrap()(CK_TRUE, slots.as_mut_ptr(), &mut n) };
    check("C_GetSlotList", rv).unwrap();
    let mut padded = [b' '; 32];
    padded[..label.len().min(32)].copy_from_slice(&label.as_bytes()[..label.len().min(32)]);
    slots[..n as usize]
        .iter()
        .copied()
        .find(|s| {
            let mut info = CK_TOKEN_INFO::default();
            // SAFETY: a valid out pointer.
            let rv = unsafe { f.C_GetTokenInfo.unwrap()(*s, &mut info) };
            rv == CKR_OK && info.label == padded
        })
        .unwrap_or_else(|| panic!("no token labelled {label}"))
}

/// What the timed loop needs, made before timing, as session objects of the set-up session.
fn setup(m: &RawModule, s: CK_SESSION_HANDLE, op: Op) -> CK_OBJECT_HANDLE {
    let f = m.f();
    let (tru, fals) = ([CK_TRUE], [CK_FALSE]);
    match op {
        Op::SignEcdsaP256 | Op::Fabric | Op::FabricEndorse | Op::GetAttributes => {
            let mut public = [
                attr(CKA_EC_PARAMS, P256),
                attr(CKA_TOKEN, &fals),
                attr(CKA_VERIFY, &tru),
            ];
            let mut private = [
                attr(CKA_TOKEN, &fals),
                attr(CKA_SIGN, &tru),
                attr(CKA_SENSITIVE, &tru),
                attr(CKA_ID, KEY_ID),
            ];
            let (mut public_key, mut private_key) = (0, 0);
            // SAFETY: valid templates and out pointers.
            let rv = unsafe {
                f.C_GenerateKeyPair.unwrap()(
                    s,
                    &mut mechanism(CKM_EC_KEY_PAIR_GEN),
                    public.as_mut_ptr(),
                    public.len() as CK_ULONG,
                    private.as_mut_ptr(),
                    private.len() as CK_ULONG,
                    &mut public_key,
                    &mut private_key,
                )
            };
            check("EC P-256 key generation", rv).unwrap();
            match op {
                Op::GetAttributes => public_key,
                _ => private_key,
            }
        }
        Op::FindObject => {
            let class = CKO_DATA.to_ne_bytes();
            let mut t = [
                attr(CKA_CLASS, &class),
                attr(CKA_TOKEN, &fals),
                attr(CKA_LABEL, LABEL),
                attr(CKA_VALUE, &[1; 16]),
            ];
            let mut h = 0;
            // SAFETY: a valid template and out pointer.
            let rv = unsafe { f.C_CreateObject.unwrap()(s, t.as_mut_ptr(), 4, &mut h) };
            check("data object", rv).unwrap();
            h
        }
        Op::SignMlDsa65 => {
            let set: CK_ULONG = CKP_ML_DSA_65;
            let set = set.to_ne_bytes();
            let mut public = [
                attr(CKA_TOKEN, &fals),
                attr(CKA_PARAMETER_SET, &set),
                attr(CKA_VERIFY, &tru),
            ];
            let mut private = [attr(CKA_TOKEN, &fals), attr(CKA_SIGN, &tru)];
            let (mut public_key, mut private_key) = (0, 0);
            // SAFETY: valid templates and out pointers.
            let rv = unsafe {
                f.C_GenerateKeyPair.unwrap()(
                    s,
                    &mut mechanism(CKM_ML_DSA_KEY_PAIR_GEN),
                    public.as_mut_ptr(),
                    3,
                    private.as_mut_ptr(),
                    2,
                    &mut public_key,
                    &mut private_key,
                )
            };
            check("ML-DSA-65 key generation", rv).unwrap();
            private_key
        }
        Op::Random | Op::DigestSha256 => CK_INVALID_HANDLE,
    }
}

/// A two-call function `(session, in, in_len, out, out_len)` as applications call it: the
/// size with a NULL buffer, then the output.
fn two_call(
    what: &str,
    f: unsafe extern "C" fn(
        CK_SESSION_HANDLE,
        *mut CK_BYTE,
        CK_ULONG,
        *mut CK_BYTE,
        *mut CK_ULONG,
    ) -> CK_RV,
    s: CK_SESSION_HANDLE,
    input: &[u8],
) -> Result<(), String> {
    let mut len: CK_ULONG = 0;
    let n = input.len() as CK_ULONG;
    let p = input.as_ptr() as *mut u8;
    // SAFETY: a NULL buffer asks the size.
    check(what, unsafe { f(s, p, n, ptr::null_mut(), &mut len) })?;
    let mut out = vec![0u8; len as usize];
    // SAFETY: a buffer of len bytes.
    check(what, unsafe { f(s, p, n, out.as_mut_ptr(), &mut len) })
}

/// The key of CKA_ID `KEY_ID`, found as Fabric's findKeyPairFromSKI does (one handle asked).
fn find_key(m: &RawModule, s: CK_SESSION_HANDLE) -> Result<CK_OBJECT_HANDLE, String> {
    let f = m.f();
    let class = CKO_PRIVATE_KEY.to_ne_bytes();
    let mut t = [attr(CKA_CLASS, &class), attr(CKA_ID, KEY_ID)];
    let (mut key, mut n) = (0, 0);
    // SAFETY: a template of two attributes, a buffer of one handle.
    unsafe {
        check(
            "C_FindObjectsInit",
            f.C_FindObjectsInit.unwrap()(s, t.as_mut_ptr(), 2),
        )?;
        let rv = f.C_FindObjects.unwrap()(s, &mut key, 1, &mut n);
        check("C_FindObjectsFinal", f.C_FindObjectsFinal.unwrap()(s))?;
        check("C_FindObjects", rv)?;
    }
    if n != 1 {
        return Err("the key was not found by CKA_ID".into());
    }
    Ok(key)
}

fn one(m: &RawModule, s: CK_SESSION_HANDLE, op: Op, key: CK_OBJECT_HANDLE) -> Result<(), String> {
    let f = m.f();
    match op {
        Op::Random => {
            let mut buf = [0u8; 32];
            // SAFETY: a buffer of 32 bytes.
            check("C_GenerateRandom", unsafe {
                f.C_GenerateRandom.unwrap()(s, buf.as_mut_ptr(), 32)
            })
        }
        Op::DigestSha256 => {
            // SAFETY: a valid mechanism.
            check("C_DigestInit", unsafe {
                f.C_DigestInit.unwrap()(s, &mut mechanism(CKM_SHA256))
            })?;
            two_call("C_Digest", f.C_Digest.unwrap(), s, &DIGEST)
        }
        Op::SignEcdsaP256 => {
            // SAFETY: a valid mechanism and key.
            check("C_SignInit", unsafe {
                f.C_SignInit.unwrap()(s, &mut mechanism(CKM_ECDSA), key)
            })?;
            let mut sig = [0u8; 64];
            let mut len: CK_ULONG = 64;
            // SAFETY: buffers of the stated sizes.
            check("C_Sign", unsafe {
                f.C_Sign.unwrap()(
                    s,
                    DIGEST.as_ptr() as *mut u8,
                    32,
                    sig.as_mut_ptr(),
                    &mut len,
                )
            })
        }
        Op::SignMlDsa65 => {
            // SAFETY: a valid mechanism and key.
            check("C_SignInit", unsafe {
                f.C_SignInit.unwrap()(s, &mut mechanism(CKM_ML_DSA), key)
            })?;
            two_call("C_Sign", f.C_Sign.unwrap(), s, &DIGEST)
        }
        Op::Fabric | Op::FabricEndorse => {
            let key = match op {
                Op::FabricEndorse => find_key(m, s)?,
                _ => key,
            };
            // SAFETY: a valid mechanism and key.
            check("C_SignInit", unsafe {
                f.C_SignInit.unwrap()(s, &mut mechanism(CKM_ECDSA), key)
            })?;
            two_call("C_Sign", f.C_Sign.unwrap(), s, &DIGEST)
        }
        Op::GetAttributes => {
            let mut t = [attr(CKA_EC_PARAMS, &[]), attr(CKA_EC_POINT, &[])];
            for a in &mut t {
                a.pValue = ptr::null_mut();
            }
            // SAFETY: a template of NULL values asks the lengths.
            check("C_GetAttributeValue (lengths)", unsafe {
                f.C_GetAttributeValue.unwrap()(s, key, t.as_mut_ptr(), 2)
            })?;
            let mut params = vec![0u8; t[0].ulValueLen as usize];
            let mut point = vec![0u8; t[1].ulValueLen as usize];
            t[0].pValue = params.as_mut_ptr().cast();
            t[1].pValue = point.as_mut_ptr().cast();
            // SAFETY: buffers of the lengths the module gave.
            check("C_GetAttributeValue", unsafe {
                f.C_GetAttributeValue.unwrap()(s, key, t.as_mut_ptr(), 2)
            })?;
            if params != P256 {
                return Err("CKA_EC_PARAMS differs".into());
            }
            Ok(())
        }
        Op::FindObject => {
            let mut t = [attr(CKA_LABEL, LABEL)];
            let mut found = [0 as CK_OBJECT_HANDLE; 10];
            let mut total = 0;
            // SAFETY: a template of one attribute, a buffer of ten handles.
            unsafe {
                check(
                    "C_FindObjectsInit",
                    f.C_FindObjectsInit.unwrap()(s, t.as_mut_ptr(), 1),
                )?;
                loop {
                    let mut n = 0;
                    let rv = f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), 10, &mut n);
                    if rv != CKR_OK || n == 0 {
                        f.C_FindObjectsFinal.unwrap()(s);
                        check("C_FindObjects", rv)?;
                        break;
                    }
                    total += n;
                }
            }
            if total == 0 {
                return Err("object not found".into());
            }
            Ok(())
        }
    }
}

/// User and system CPU time of this process so far, in seconds (getrusage(2)).
fn cpu_seconds() -> f64 {
    // SAFETY: a zeroed rusage for the kernel to fill.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let args = Args::parse();
    // One function table, taken once and initialised once: a module may hand out a fresh,
    // uninitialised table at each C_GetFunctionList (p11-kit's client module does).
    let m = Arc::new(RawModule::load(std::path::Path::new(&args.module)));
    check("C_Initialize", m.initialize()).unwrap();
    let slot = slot_of(&m, &args.token_label);
    // Session objects live as long as the session that made them: keep it open.
    let setup_session = m.open_rw(slot);
    let rv = m.login(setup_session, &args.pin);
    assert!(
        rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN,
        "C_Login: {rv:#x}"
    );
    let key = setup(&m, setup_session, args.op);

    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(args.threads + 1));
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let (m, stop, start) = (m.clone(), stop.clone(), start.clone());
            let op = args.op;
            std::thread::spawn(move || {
                let s = m.open_rw(slot);
                let mut lat = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                let mut first_error = None;
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if let Err(e) = one(&m, s, op, key) {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                // SAFETY: this thread's session.
                unsafe { m.f().C_CloseSession.unwrap()(s) };
                (lat, errors, first_error)
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let cpu0 = cpu_seconds();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (lat, e, first) = w.join().expect("worker");
        all.extend(lat);
        errors += e;
        if let Some(first) = first {
            eprintln!("p11bench: {e} errors in a thread, the first: {first}");
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    all.sort_unstable();
    let ops = all.len() as u64;
    let ops_per_sec = ops as f64 / elapsed;
    let (p50, p99, p999) = (
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
    );
    let op_name = format!(
        "{:?}",
        args.op
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    );
    println!(
        "{} threads={} seconds={:.1}: {} ops, {:.0} ops/s, p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, {} errors",
        op_name.trim_matches('"'),
        args.threads,
        elapsed,
        ops,
        ops_per_sec,
        p50,
        p99,
        p999,
        errors
    );
    if args.json {
        println!(
            "{{\"op\":{},\"threads\":{},\"seconds\":{:.3},\"ops\":{},\"ops_per_sec\":{:.1},\"p50_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2},\"errors\":{},\"cpu_us_per_op\":{:.2},\"module\":{:?}}}",
            op_name,
            args.threads,
            elapsed,
            ops,
            ops_per_sec,
            p50,
            p99,
            p999,
            errors,
            cpu * 1e6 / ops.max(1) as f64,
            args.module
        );
    }
    // SAFETY: the set-up session; nothing else is in progress.
    unsafe {
        m.f().C_CloseSession.unwrap()(setup_session);
        m.f().C_Finalize.unwrap()(ptr::null_mut());
    }
}
