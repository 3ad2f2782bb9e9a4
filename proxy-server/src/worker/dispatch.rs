//! One `match` over [`Request`]: checks the application's view, calls the vendor library, and
//! builds the response. Each arm is the server side of one PKCS#11 function.

use cryptoki_sys::*;
use protocol::attribute::{completable, follow_up};
use protocol::frame::MAX_DATA_LEN;
use protocol::message::{Info, MechanismInfo, Request, Response, SessionInfo, SlotInfo, TokenInfo};
use protocol::objects::Handout;
use protocol::shape::Array;
use protocol::shape::Outputs;

use super::backend::{InitFn, Output};
use super::connection::{App, Shared};
use super::identify;
use super::mechanism::{CMechanism, CMsgParam};
use super::template::{to_ulong, wire, CTemplate};

/// Most handles returned by one C_FindObjects (the caller loops until none are left).
const MAX_FIND_COUNT: u64 = 65_536;

/// Serves one request for `app`.
pub fn dispatch(shared: &Shared, app: &App, request: Request) -> Response {
    if let Some(rv) = shared.policy.check(&request) {
        return Response::Rv(wire(rv));
    }
    // The identity of the objects an answer hands out travels with it (one round trip), read
    // as the application itself could read it (not where C_GetAttributeValue is denied).
    let handout = app
        .identify_objects
        .then(|| Handout::of(&request))
        .flatten()
        .filter(|_| shared.policy.allows("C_GetAttributeValue"));
    let answer = match call(shared, app, request) {
        Ok(r) => r,
        Err(rv) => Response::Rv(rv),
    };
    match handout {
        Some(handout) => identify::with_identities(shared, app, handout, answer),
        None => answer,
    }
}

/// The vendor's pointer for the function's output `i`: `value`, or NULL where the caller
/// gave NULL (DESIGN.md, "The vendor decides").
fn out_ptr<T>(outputs: Outputs, i: u8, value: &mut T) -> *mut T {
    if outputs.has(i) {
        value
    } else {
        std::ptr::null_mut()
    }
}

fn output(o: Output) -> Response {
    match o.completed {
        Some((rv, out_len, data)) => Response::Completed {
            len: wire(o.len),
            rv: wire(rv),
            out_len: wire(out_len),
            data,
        },
        None => Response::Output {
            rv: wire(o.rv),
            len: wire(o.len),
            data: o.data,
        },
    }
}

fn rv(r: CK_RV) -> Result<Response, CK_RV> {
    Ok(Response::Rv(wire(r)))
}

fn handle(r: CK_RV, h: CK_ULONG) -> Result<Response, CK_RV> {
    if r == CKR_OK {
        Ok(Response::Handle(wire(h)))
    } else {
        Err(r)
    }
}

fn ok_then(r: CK_RV, response: impl FnOnce() -> Response) -> Result<Response, CK_RV> {
    if r == CKR_OK {
        Ok(response())
    } else {
        Err(r)
    }
}

fn version(v: CK_VERSION) -> (u8, u8) {
    (v.major, v.minor)
}

/// A message-based call's answer: its output and the parameter as the token left it.
fn message(o: Output, p: &CMsgParam) -> Response {
    Response::Message {
        rv: wire(o.rv),
        len: wire(o.len),
        data: o.data,
        param: p.to_wire(),
    }
}

fn call(shared: &Shared, app: &App, request: Request) -> Result<Response, CK_RV> {
    let b = &shared.backend;
    let f = b.list();
    match request {
        // General purpose functions (v2.40 §5.4). An application's worker forwards them: the
        // vendor instance is the application's own. A shared worker's instance is everybody's:
        // a later C_Initialize is answered as the vendor would (already initialised), and
        // C_Finalize closes only the application's sessions.
        Request::Initialize { args } if !app.shares_vendor() => {
            rv(b.initialize(args, shared.settings.init_args.as_deref()))
        }
        Request::Initialize { .. } => rv(CKR_CRYPTOKI_ALREADY_INITIALIZED),
        Request::Finalize {} if !app.shares_vendor() => {
            let r = b.finalize();
            if r == CKR_OK {
                app.take_all_sessions();
                shared.finalized();
            }
            rv(r)
        }
        Request::Finalize {} => {
            shared.close_sessions(&app.take_all_sessions());
            rv(CKR_OK)
        }
        Request::GetInfo { outputs } => {
            let mut i = CK_INFO::default();
            let r = b.get_info(out_ptr(outputs, 0, &mut i));
            ok_then(r, || {
                Response::Info(Info {
                    cryptoki_version: version(i.cryptokiVersion),
                    manufacturer_id: i.manufacturerID.to_vec(),
                    flags: wire(i.flags),
                    library_description: i.libraryDescription.to_vec(),
                    library_version: version(i.libraryVersion),
                })
            })
        }
        Request::GetFunctionStatus { session } => {
            rv(b.session(f.C_GetFunctionStatus, app.check(session)?))
        }
        Request::CancelFunction { session } => {
            rv(b.session(f.C_CancelFunction, app.check(session)?))
        }

        // Slot and token management (v2.40 §5.5).
        Request::GetSlotList {
            token_present,
            capacity,
        } => {
            let (r, count, values) = b.slot_list(token_present, capacity);
            Ok(Response::Ulongs {
                rv: wire(r),
                count: wire(count),
                values: values.into_iter().map(wire).collect(),
            })
        }
        Request::GetSlotInfo { slot, outputs } => {
            let mut i = CK_SLOT_INFO::default();
            let r = b.get_slot_info(to_ulong(slot)?, out_ptr(outputs, 0, &mut i));
            ok_then(r, || {
                Response::SlotInfo(SlotInfo {
                    slot_description: i.slotDescription.to_vec(),
                    manufacturer_id: i.manufacturerID.to_vec(),
                    flags: wire(i.flags),
                    hardware_version: version(i.hardwareVersion),
                    firmware_version: version(i.firmwareVersion),
                })
            })
        }
        Request::GetTokenInfo { slot, outputs } => {
            let mut i = CK_TOKEN_INFO::default();
            let r = b.get_token_info(to_ulong(slot)?, out_ptr(outputs, 0, &mut i));
            ok_then(r, || Response::TokenInfo(token_info(&i)))
        }
        Request::WaitForSlotEvent {
            flags,
            reserved,
            outputs,
        } => {
            let mut slot = 0;
            let slot_ptr = out_ptr(outputs, 0, &mut slot);
            let r = b.wait_for_slot_event(to_ulong(flags)?, reserved, slot_ptr);
            handle(r, slot)
        }
        Request::GetMechanismList { slot, capacity } => {
            let (r, count, values) = b.mechanism_list(to_ulong(slot)?, capacity);
            Ok(Response::Ulongs {
                rv: wire(r),
                count: wire(count),
                values: values.into_iter().map(wire).collect(),
            })
        }
        Request::GetMechanismInfo {
            slot,
            mechanism_type: mechanism,
            outputs,
        } => {
            let mut i = CK_MECHANISM_INFO::default();
            let info = out_ptr(outputs, 0, &mut i);
            let r = b.get_mechanism_info(to_ulong(slot)?, to_ulong(mechanism)?, info);
            ok_then(r, || {
                Response::MechanismInfo(MechanismInfo {
                    min_key_size: wire(i.ulMinKeySize),
                    max_key_size: wire(i.ulMaxKeySize),
                    flags: wire(i.flags),
                })
            })
        }
        Request::InitToken {
            slot,
            so_pin,
            label,
        } => rv(b.init_token(to_ulong(slot)?, so_pin.as_deref(), &label)),
        Request::InitPin { session, pin } => rv(b.init_pin(app.check(session)?, pin.as_deref())),
        Request::SetPin {
            session,
            old_pin,
            new_pin,
        } => {
            let s = app.check(session)?;
            rv(b.set_pin(s, old_pin.as_deref(), new_pin.as_deref()))
        }

        // Session management (v2.40 §5.6).
        Request::OpenSession {
            slot,
            flags,
            outputs,
        } => {
            let slot = to_ulong(slot)?;
            let mut h = 0;
            let r = b.open_session(slot, to_ulong(flags)?, out_ptr(outputs, 0, &mut h));
            if r == CKR_OK && outputs.has(0) {
                app.add_session(h, slot);
            }
            handle(r, h)
        }
        Request::CloseSession { session } => {
            let h = app.check(session)?;
            let r = b.session(f.C_CloseSession, h);
            if r == CKR_OK || r == CKR_SESSION_HANDLE_INVALID || r == CKR_SESSION_CLOSED {
                app.remove_session(h);
            }
            rv(r)
        }
        Request::CloseAllSessions { slot } if !app.shares_vendor() => {
            let slot = to_ulong(slot)?;
            let r = b.close_all_sessions(slot);
            if r == CKR_OK {
                app.take_sessions_of_slot(slot);
            }
            rv(r)
        }
        Request::CloseAllSessions { slot } => {
            // In a shared worker, never the vendor's C_CloseAllSessions: it would close every
            // application's sessions.
            let slot = to_ulong(slot)?;
            let mut probe = CK_SLOT_INFO::default();
            let r = b.get_slot_info(slot, &mut probe);
            if r != CKR_OK {
                return rv(r);
            }
            shared.close_sessions(&app.take_sessions_of_slot(slot));
            rv(CKR_OK)
        }
        Request::GetSessionInfo { session, outputs } => {
            let mut i = CK_SESSION_INFO::default();
            let r = b.get_session_info(app.check(session)?, out_ptr(outputs, 0, &mut i));
            ok_then(r, || {
                Response::SessionInfo(SessionInfo {
                    slot: wire(i.slotID),
                    state: wire(i.state),
                    flags: wire(i.flags),
                    device_error: wire(i.ulDeviceError),
                })
            })
        }
        Request::GetOperationState { session, capacity } => Ok(output(b.final_(
            f.C_GetOperationState,
            app.check(session)?,
            capacity,
        ))),
        Request::SetOperationState {
            session,
            state,
            encryption_key,
            authentication_key,
        } => {
            let s = app.check(session)?;
            rv(b.set_operation_state(
                s,
                &state,
                object_handle(encryption_key)?,
                object_handle(authentication_key)?,
            ))
        }
        Request::Login {
            session,
            user_type,
            pin,
        } => {
            let s = app.check(session)?;
            rv(b.login(s, to_ulong(user_type)?, pin.as_deref()))
        }
        Request::Logout { session } => rv(b.session(f.C_Logout, app.check(session)?)),

        // Object management (v2.40 §5.7).
        Request::CreateObject {
            session,
            template,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            handle(b.create_object(s, &mut t, out_ptr(outputs, 0, &mut h)), h)
        }
        Request::CopyObject {
            session,
            object,
            template,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            let r = b.copy_object(
                s,
                object_handle(object)?,
                &mut t,
                out_ptr(outputs, 0, &mut h),
            );
            handle(r, h)
        }
        Request::DestroyObject { session, object } => {
            let s = app.check(session)?;
            let h = object_handle(object)?;
            let r = b.destroy_object(s, h);
            if r == CKR_OK {
                app.forget_object(object);
            }
            rv(r)
        }
        Request::GetObjectSize {
            session,
            object,
            outputs,
        } => {
            let mut size = 0;
            let s = app.check(session)?;
            let r = b.get_object_size(s, object_handle(object)?, out_ptr(outputs, 0, &mut size));
            ok_then(r, || Response::Size(wire(size)))
        }
        Request::GetAttributeValue {
            session,
            object,
            query,
            complete,
        } => {
            let s = app.check(session)?;
            let h = object_handle(object)?;
            let mut t = CTemplate::for_query(&query)?;
            let r = b.get_attribute_value(s, h, &mut t);
            let lengths = t.results();
            // The application's next call, made now (v2.40 §5.2, §5.7.5): the values, in
            // buffers of the lengths the vendor gave (none too large for one frame).
            let real = match (&query, complete && r == CKR_OK) {
                (Array::Given(q), true) if completable(&query) => {
                    follow_up(q, &lengths).and_then(|real| CTemplate::for_query(&real.into()).ok())
                }
                _ => None,
            };
            Ok(match real {
                Some(mut real) => {
                    let rv = b.get_attribute_value(s, h, &mut real);
                    Response::AttributesCompleted {
                        lengths,
                        rv: wire(rv),
                        values: real.results(),
                    }
                }
                None => Response::Attributes {
                    rv: wire(r),
                    values: lengths,
                },
            })
        }
        Request::SetAttributeValue {
            session,
            object,
            template,
        } => {
            let s = app.check(session)?;
            let mut t = CTemplate::from_wire(&template)?;
            rv(b.set_attribute_value(s, object_handle(object)?, &mut t))
        }
        Request::FindObjectsInit {
            session,
            template,
            prefetch,
        } => {
            let s = app.check(session)?;
            let mut t = CTemplate::from_wire(&template)?;
            let r = b.find_objects_init(s, &mut t);
            if r != CKR_OK || prefetch == 0 {
                return rv(r);
            }
            // The application's next calls, made now (v2.40 §5.7.8, §5.7.9): the first
            // handles, and the end of the search when they were all there is.
            let asked = prefetch.min(MAX_FIND_COUNT) as usize;
            let (find_rv, found) = b.find_objects(s, Ok(asked), true);
            let final_rv = (find_rv == CKR_OK && found.len() < asked)
                .then(|| wire(b.session(f.C_FindObjectsFinal, s)));
            Ok(Response::Found {
                objects: found.into_iter().map(wire).collect(),
                find_rv: wire(find_rv),
                final_rv,
            })
        }
        Request::FindObjects {
            session,
            max_count,
            outputs,
        } => {
            let s = app.check(session)?;
            let max = if outputs.has(0) {
                Ok(max_count.min(MAX_FIND_COUNT) as usize)
            } else {
                Err(to_ulong(max_count)?)
            };
            let (r, found) = b.find_objects(s, max, outputs.has(1));
            let values: Vec<u64> = found.into_iter().map(wire).collect();
            Ok(Response::Ulongs {
                rv: wire(r),
                count: values.len() as u64,
                values,
            })
        }
        Request::FindObjectsFinal { session } => {
            rv(b.session(f.C_FindObjectsFinal, app.check(session)?))
        }
        Request::IdentifyObjects { session, objects } => {
            let s = app.check(session)?;
            // No more than one C_FindObjects hands out.
            if objects.len() as u64 > MAX_FIND_COUNT {
                tracing::warn!(
                    objects = objects.len(),
                    "identities of more objects than one search hands out"
                );
                return Err(CKR_ARGUMENTS_BAD);
            }
            Ok(identify::identify(shared, app, s, objects))
        }

        // Encryption, decryption, digest, sign, verify (v2.40 §5.8 to §5.13).
        Request::EncryptInit {
            session,
            mechanism,
            key,
        } => init(shared, app, f.C_EncryptInit, session, &mechanism, key),
        Request::DecryptInit {
            session,
            mechanism,
            key,
        } => init(shared, app, f.C_DecryptInit, session, &mechanism, key),
        Request::SignInit {
            session,
            mechanism,
            key,
        } => init(shared, app, f.C_SignInit, session, &mechanism, key),
        Request::SignRecoverInit {
            session,
            mechanism,
            key,
        } => init(shared, app, f.C_SignRecoverInit, session, &mechanism, key),
        Request::VerifyInit {
            session,
            mechanism,
            key,
        } => init(shared, app, f.C_VerifyInit, session, &mechanism, key),
        Request::VerifyRecoverInit {
            session,
            mechanism,
            key,
        } => init(shared, app, f.C_VerifyRecoverInit, session, &mechanism, key),
        Request::DigestInit { session, mechanism } => {
            let s = app.check(session)?;
            rv(b.digest_init(s, &mut CMechanism::from_wire(&mechanism)?))
        }
        Request::Encrypt {
            session,
            data,
            capacity,
        } => Ok(output(b.update(
            f.C_Encrypt,
            app.check(session)?,
            &data,
            capacity,
        ))),
        Request::EncryptUpdate {
            session,
            data,
            capacity,
        } => Ok(output(b.update(
            f.C_EncryptUpdate,
            app.check(session)?,
            &data,
            capacity,
        ))),
        Request::EncryptFinal { session, capacity } => Ok(output(b.final_(
            f.C_EncryptFinal,
            app.check(session)?,
            capacity,
        ))),
        Request::Decrypt {
            session,
            data,
            capacity,
        } => Ok(output(b.update(
            f.C_Decrypt,
            app.check(session)?,
            &data,
            capacity,
        ))),
        Request::DecryptUpdate {
            session,
            data,
            capacity,
        } => Ok(output(b.update(
            f.C_DecryptUpdate,
            app.check(session)?,
            &data,
            capacity,
        ))),
        Request::DecryptFinal { session, capacity } => Ok(output(b.final_(
            f.C_DecryptFinal,
            app.check(session)?,
            capacity,
        ))),
        Request::Digest {
            session,
            data,
            capacity,
        } => Ok(output(b.update(
            f.C_Digest,
            app.check(session)?,
            &data,
            capacity,
        ))),
        Request::DigestUpdate { session, data } => {
            rv(b.input(f.C_DigestUpdate, app.check(session)?, &data))
        }
        Request::DigestKey { session, key } => {
            let s = app.check(session)?;
            rv(b.digest_key(s, object_handle(key)?))
        }
        Request::DigestFinal { session, capacity } => Ok(output(b.final_(
            f.C_DigestFinal,
            app.check(session)?,
            capacity,
        ))),
        Request::Sign {
            session,
            data,
            capacity,
        } => Ok(output(b.update(
            f.C_Sign,
            app.check(session)?,
            &data,
            capacity,
        ))),
        Request::SignUpdate { session, data } => {
            rv(b.input(f.C_SignUpdate, app.check(session)?, &data))
        }
        Request::SignFinal { session, capacity } => Ok(output(b.final_(
            f.C_SignFinal,
            app.check(session)?,
            capacity,
        ))),
        Request::SignRecover {
            session,
            data,
            capacity,
        } => Ok(output(b.update(
            f.C_SignRecover,
            app.check(session)?,
            &data,
            capacity,
        ))),
        Request::Verify {
            session,
            data,
            signature,
        } => rv(b.verify(app.check(session)?, &data, &signature)),
        Request::VerifyUpdate { session, data } => {
            rv(b.input(f.C_VerifyUpdate, app.check(session)?, &data))
        }
        Request::VerifyFinal { session, signature } => {
            rv(b.input(f.C_VerifyFinal, app.check(session)?, &signature))
        }
        Request::VerifyRecover {
            session,
            signature,
            capacity,
        } => Ok(output(b.update(
            f.C_VerifyRecover,
            app.check(session)?,
            &signature,
            capacity,
        ))),
        Request::DigestEncryptUpdate {
            session,
            data,
            capacity,
        } => Ok(output(b.update(
            f.C_DigestEncryptUpdate,
            app.check(session)?,
            &data,
            capacity,
        ))),
        Request::DecryptDigestUpdate {
            session,
            data,
            capacity,
        } => Ok(output(b.update(
            f.C_DecryptDigestUpdate,
            app.check(session)?,
            &data,
            capacity,
        ))),
        Request::SignEncryptUpdate {
            session,
            data,
            capacity,
        } => Ok(output(b.update(
            f.C_SignEncryptUpdate,
            app.check(session)?,
            &data,
            capacity,
        ))),
        Request::DecryptVerifyUpdate {
            session,
            data,
            capacity,
        } => Ok(output(b.update(
            f.C_DecryptVerifyUpdate,
            app.check(session)?,
            &data,
            capacity,
        ))),

        // Key management (v2.40 §5.14).
        Request::GenerateKey {
            session,
            mechanism,
            template,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            let r = b.generate_key(s, &mut m, &mut t, out_ptr(outputs, 0, &mut h));
            handle(r, h)
        }
        Request::GenerateKeyPair {
            session,
            mechanism,
            public_template,
            private_template,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let mut public = CTemplate::from_wire(&public_template)?;
            let mut private = CTemplate::from_wire(&private_template)?;
            let (mut pubk, mut privk) = (0, 0);
            let r = b.generate_key_pair(
                s,
                &mut m,
                &mut public,
                &mut private,
                (
                    out_ptr(outputs, 0, &mut pubk),
                    out_ptr(outputs, 1, &mut privk),
                ),
            );
            ok_then(r, || Response::KeyPair {
                public_key: wire(pubk),
                private_key: wire(privk),
            })
        }
        Request::WrapKey {
            session,
            mechanism,
            wrapping_key,
            key,
            capacity,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            Ok(output(b.wrap_key(
                s,
                &mut m,
                object_handle(wrapping_key)?,
                object_handle(key)?,
                capacity,
            )))
        }
        Request::UnwrapKey {
            session,
            mechanism,
            unwrapping_key,
            wrapped_key,
            template,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            handle(
                b.unwrap_key(
                    s,
                    &mut m,
                    object_handle(unwrapping_key)?,
                    &wrapped_key,
                    &mut t,
                    out_ptr(outputs, 0, &mut h),
                ),
                h,
            )
        }
        Request::DeriveKey {
            session,
            mechanism,
            base_key,
            template,
            outputs,
        } => {
            let s = app.check(session)?;
            let mut m = CMechanism::from_wire(&mechanism)?;
            let mut t = CTemplate::from_wire(&template)?;
            let mut h = 0;
            let key = out_ptr(outputs, 0, &mut h);
            handle(
                b.derive_key(s, &mut m, object_handle(base_key)?, &mut t, key),
                h,
            )
        }

        // PKCS#11 v3.0 (v3.0 §5.6, §5.9 to §5.16): CKR_FUNCTION_NOT_SUPPORTED from a 2.x vendor.
        Request::LoginUser {
            session,
            user_type,
            pin,
            username,
        } => rv(b.login_user(
            app.check(session)?,
            to_ulong(user_type)?,
            pin.as_deref(),
            &username,
        )),
        Request::SessionCancel { session, flags } => {
            rv(b.session_cancel(app.check(session)?, to_ulong(flags)?))
        }
        Request::MessageEncryptInit {
            session,
            mechanism,
            key,
        } => init(
            shared,
            app,
            b.list3().and_then(|l| l.C_MessageEncryptInit),
            session,
            &mechanism,
            key,
        ),
        Request::MessageDecryptInit {
            session,
            mechanism,
            key,
        } => init(
            shared,
            app,
            b.list3().and_then(|l| l.C_MessageDecryptInit),
            session,
            &mechanism,
            key,
        ),
        Request::MessageSignInit {
            session,
            mechanism,
            key,
        } => init(
            shared,
            app,
            b.list3().and_then(|l| l.C_MessageSignInit),
            session,
            &mechanism,
            key,
        ),
        Request::MessageVerifyInit {
            session,
            mechanism,
            key,
        } => init(
            shared,
            app,
            b.list3().and_then(|l| l.C_MessageVerifyInit),
            session,
            &mechanism,
            key,
        ),
        Request::MessageEncryptFinal { session } => rv(b.session(
            b.list3().and_then(|l| l.C_MessageEncryptFinal),
            app.check(session)?,
        )),
        Request::MessageDecryptFinal { session } => rv(b.session(
            b.list3().and_then(|l| l.C_MessageDecryptFinal),
            app.check(session)?,
        )),
        Request::MessageSignFinal { session } => rv(b.session(
            b.list3().and_then(|l| l.C_MessageSignFinal),
            app.check(session)?,
        )),
        Request::MessageVerifyFinal { session } => rv(b.session(
            b.list3().and_then(|l| l.C_MessageVerifyFinal),
            app.check(session)?,
        )),
        Request::EncryptMessage {
            session,
            param,
            aad,
            data,
            capacity,
        } => {
            let s = app.check(session)?;
            let mut p = CMsgParam::from_wire(&param)?;
            let o = b.crypt_message(false, s, &mut p, &aad, &data, capacity);
            Ok(message(o, &p))
        }
        Request::DecryptMessage {
            session,
            param,
            aad,
            data,
            capacity,
        } => {
            let s = app.check(session)?;
            let mut p = CMsgParam::from_wire(&param)?;
            let o = b.crypt_message(true, s, &mut p, &aad, &data, capacity);
            Ok(message(o, &p))
        }
        Request::EncryptMessageBegin {
            session,
            param,
            aad,
        } => {
            let s = app.check(session)?;
            let mut p = CMsgParam::from_wire(&param)?;
            let r = b.crypt_message_begin(false, s, &mut p, &aad);
            Ok(message(Output::rv(r), &p))
        }
        Request::DecryptMessageBegin {
            session,
            param,
            aad,
        } => {
            let s = app.check(session)?;
            let mut p = CMsgParam::from_wire(&param)?;
            let r = b.crypt_message_begin(true, s, &mut p, &aad);
            Ok(message(Output::rv(r), &p))
        }
        Request::EncryptMessageNext {
            session,
            param,
            data,
            capacity,
            flags,
        } => {
            let s = app.check(session)?;
            let mut p = CMsgParam::from_wire(&param)?;
            let o = b.crypt_message_next(false, s, &mut p, &data, capacity, to_ulong(flags)?);
            Ok(message(o, &p))
        }
        Request::DecryptMessageNext {
            session,
            param,
            data,
            capacity,
            flags,
        } => {
            let s = app.check(session)?;
            let mut p = CMsgParam::from_wire(&param)?;
            let o = b.crypt_message_next(true, s, &mut p, &data, capacity, to_ulong(flags)?);
            Ok(message(o, &p))
        }
        Request::SignMessage {
            session,
            param,
            data,
            capacity,
        } => {
            let s = app.check(session)?;
            let mut p = CMsgParam::from_wire(&param)?;
            let o = b.sign_message(false, s, &mut p, &data, capacity);
            Ok(message(o, &p))
        }
        Request::SignMessageNext {
            session,
            param,
            data,
            capacity,
        } => {
            let s = app.check(session)?;
            let mut p = CMsgParam::from_wire(&param)?;
            let o = b.sign_message(true, s, &mut p, &data, capacity);
            Ok(message(o, &p))
        }
        Request::SignMessageBegin { session, param } => {
            let s = app.check(session)?;
            let mut p = CMsgParam::from_wire(&param)?;
            let r = b.message_begin(false, s, &mut p);
            Ok(message(Output::rv(r), &p))
        }
        Request::VerifyMessageBegin { session, param } => {
            let s = app.check(session)?;
            let mut p = CMsgParam::from_wire(&param)?;
            let r = b.message_begin(true, s, &mut p);
            Ok(message(Output::rv(r), &p))
        }
        Request::VerifyMessage {
            session,
            param,
            data,
            signature,
        } => {
            let s = app.check(session)?;
            let mut p = CMsgParam::from_wire(&param)?;
            let r = b.verify_message(false, s, &mut p, &data, &signature);
            Ok(message(Output::rv(r), &p))
        }
        Request::VerifyMessageNext {
            session,
            param,
            data,
            signature,
        } => {
            let s = app.check(session)?;
            let mut p = CMsgParam::from_wire(&param)?;
            let r = b.verify_message(true, s, &mut p, &data, &signature);
            Ok(message(Output::rv(r), &p))
        }

        // Random number generation (v2.40 §5.15).
        Request::SeedRandom { session, seed } => {
            rv(b.input(f.C_SeedRandom, app.check(session)?, &seed))
        }
        Request::GenerateRandom {
            session,
            len,
            outputs,
        } => {
            let s = app.check(session)?;
            if len > MAX_DATA_LEN && outputs.has(0) {
                tracing::warn!(len, "C_GenerateRandom: more bytes than one frame carries");
                return Err(CKR_ARGUMENTS_BAD);
            }
            let buffer = if outputs.has(0) {
                Ok(len as usize)
            } else {
                Err(to_ulong(len)?)
            };
            let (r, data) = b.generate_random(s, buffer);
            ok_then(r, || Response::Output {
                rv: wire(CKR_OK),
                len,
                data,
            })
        }
    }
}

/// An object handle from the wire, passed to the vendor as the application gave it.
fn object_handle(h: u64) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    CK_OBJECT_HANDLE::try_from(h).map_err(|_| CKR_OBJECT_HANDLE_INVALID)
}

fn init(
    shared: &Shared,
    app: &App,
    f: Option<InitFn>,
    session: u64,
    mechanism: &protocol::mechanism::Mechanism,
    key: u64,
) -> Result<Response, CK_RV> {
    let s = app.check(session)?;
    let mut m = CMechanism::from_wire(mechanism)?;
    rv(shared.backend.init(f, s, &mut m, object_handle(key)?))
}

fn token_info(i: &CK_TOKEN_INFO) -> TokenInfo {
    TokenInfo {
        label: i.label.to_vec(),
        manufacturer_id: i.manufacturerID.to_vec(),
        model: i.model.to_vec(),
        serial_number: i.serialNumber.to_vec(),
        flags: wire(i.flags),
        max_session_count: wire(i.ulMaxSessionCount),
        session_count: wire(i.ulSessionCount),
        max_rw_session_count: wire(i.ulMaxRwSessionCount),
        rw_session_count: wire(i.ulRwSessionCount),
        max_pin_len: wire(i.ulMaxPinLen),
        min_pin_len: wire(i.ulMinPinLen),
        total_public_memory: wire(i.ulTotalPublicMemory),
        free_public_memory: wire(i.ulFreePublicMemory),
        total_private_memory: wire(i.ulTotalPrivateMemory),
        free_private_memory: wire(i.ulFreePrivateMemory),
        hardware_version: version(i.hardwareVersion),
        firmware_version: version(i.firmwareVersion),
        utc_time: i.utcTime.to_vec(),
    }
}
