//! `p11bench`: PKCS#11 throughput and latency of a module, the vendor library directly or the
//! shim (with `PKCS11_PROXY_SOCKET` set), so both figures come from the same command.
//!
//! ```text
//! p11bench --module PATH --pin 1234 --token-label LABEL \
//!     --op random|sign-ecdsa-p256|digest-sha256|find-object|fabric|fabric-endorse \
//!     --threads N --seconds S [--json]
//! ```
//! Each thread has its own session; what an operation needs (an EC P-256 key pair, a data
//! object) is created as session objects before timing. `sign-ecdsa-p256` is C_SignInit and
//! one C_Sign into a buffer of the right size; `fabric` is what a Fabric peer does per
//! endorsement: C_SignInit, then C_Sign twice (size query, then the signature);
//! `fabric-endorse` is Fabric 2.2's BCCSP sequence for one endorsement: the private key found
//! by CKA_ID (C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal), then `fabric`. The JSON
//! line carries the CPU time of this process per operation (`cpu_us_per_op`, user + system).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys::{CKR_OK, CK_ULONG};
use tests::raw::RawModule;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Op {
    Random,
    SignEcdsaP256,
    DigestSha256,
    FindObject,
    Fabric,
    FabricEndorse,
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

fn login(s: &Session, pin: &str) {
    match s.login(UserType::User, Some(&AuthPin::new(pin.into()))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("C_Login: {e}"),
    }
}

/// What the timed loop needs, made before timing.
struct Fixture {
    key: Option<ObjectHandle>,
    label: Vec<u8>,
}

fn setup(s: &Session, op: Op) -> Fixture {
    let mut f = Fixture {
        key: None,
        label: b"p11bench-object".to_vec(),
    };
    match op {
        Op::SignEcdsaP256 | Op::Fabric | Op::FabricEndorse => {
            let (_, private) = s
                .generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &[
                        Attribute::EcParams(P256.to_vec()),
                        Attribute::Token(false),
                        Attribute::Verify(true),
                    ],
                    &[
                        Attribute::Token(false),
                        Attribute::Sign(true),
                        Attribute::Sensitive(true),
                        Attribute::Id(KEY_ID.to_vec()),
                    ],
                )
                .expect("EC P-256 key generation");
            f.key = Some(private);
        }
        Op::FindObject => {
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(false),
                Attribute::Label(f.label.clone()),
                Attribute::Value(vec![1; 16]),
            ])
            .expect("data object");
        }
        Op::Random | Op::DigestSha256 => {}
    }
    f
}

fn one(s: &Session, raw: &RawModule, op: Op, f: &Fixture, buf: &mut [u8]) -> Result<(), Error> {
    match op {
        Op::Random => s.generate_random_slice(buf),
        Op::DigestSha256 => s.digest(&Mechanism::Sha256, &buf[..32]).map(|_| ()),
        Op::SignEcdsaP256 => {
            s.sign_init(&Mechanism::Ecdsa, f.key.unwrap())?;
            let mut sig = [0u8; 64];
            let mut len: CK_ULONG = 64;
            // SAFETY: the session is open; buffers of the stated sizes.
            let rv = unsafe {
                raw.f().C_Sign.unwrap()(
                    s.handle(),
                    DIGEST.as_ptr() as *mut u8,
                    32,
                    sig.as_mut_ptr(),
                    &mut len,
                )
            };
            match rv {
                CKR_OK => Ok(()),
                _ => Err(Error::Pkcs11(
                    RvError::GeneralError,
                    cryptoki::context::Function::Sign,
                )),
            }
        }
        Op::Fabric => s
            .sign(&Mechanism::Ecdsa, f.key.unwrap(), &DIGEST)
            .map(|_| ()),
        Op::FabricEndorse => {
            // One handle asked for, as Fabric's findKeyPairFromSKI does.
            let class = cryptoki_sys::CKO_PRIVATE_KEY.to_ne_bytes();
            let mut template = [
                tests::fabric::attr(cryptoki_sys::CKA_CLASS, &class),
                tests::fabric::attr(cryptoki_sys::CKA_ID, KEY_ID),
            ];
            let mut found = [0 as cryptoki_sys::CK_OBJECT_HANDLE; 1];
            let mut n: CK_ULONG = 0;
            let list = raw.f();
            // SAFETY: the session is open; a template of two attributes, a buffer of one
            // handle.
            let rv = unsafe {
                let rv = list.C_FindObjectsInit.unwrap()(s.handle(), template.as_mut_ptr(), 2);
                let rv2 = list.C_FindObjects.unwrap()(s.handle(), found.as_mut_ptr(), 1, &mut n);
                let rv3 = list.C_FindObjectsFinal.unwrap()(s.handle());
                rv | rv2 | rv3
            };
            if rv != CKR_OK || n != 1 {
                return Err(Error::Pkcs11(
                    RvError::KeyHandleInvalid,
                    cryptoki::context::Function::FindObjects,
                ));
            }
            s.sign(&Mechanism::Ecdsa, f.key.unwrap(), &DIGEST)
                .map(|_| ())
        }
        Op::FindObject => {
            let found = s.find_objects(&[Attribute::Label(f.label.clone())])?;
            assert!(!found.is_empty(), "object not found");
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
    let ctx = Pkcs11::new(&args.module).expect("load module");
    // The same module again (dlopen gives the same instance) for calls cryptoki has no
    // single-call form of.
    let raw = Arc::new(RawModule::load(std::path::Path::new(&args.module)));
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = ctx
        .get_slots_with_token()
        .expect("C_GetSlotList")
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|t| t.label() == args.token_label)
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no token labelled {}", args.token_label));

    // Session objects live as long as the session that made them: keep it open.
    let setup_session = ctx.open_rw_session(slot).expect("C_OpenSession");
    login(&setup_session, &args.pin);
    let fixture = Arc::new(setup(&setup_session, args.op));

    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(args.threads + 1));
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let (ctx, stop, start, fixture, raw) = (
                ctx.clone(),
                stop.clone(),
                start.clone(),
                fixture.clone(),
                raw.clone(),
            );
            let op = args.op;
            std::thread::spawn(move || {
                let s = ctx.open_rw_session(slot).expect("C_OpenSession");
                let mut lat = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                let mut buf = [0u8; 32];
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if one(&s, &raw, op, &fixture, &mut buf).is_err() {
                        errors += 1;
                    }
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                (lat, errors)
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
        let (lat, e) = w.join().expect("worker");
        all.extend(lat);
        errors += e;
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
    drop(setup_session);
}
