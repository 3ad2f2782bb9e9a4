//! One client connection inside a worker: the TLS handshake, the hello, and the request
//! loop that hands each request to [`super::dispatch`] and writes its answer back.

use std::io::BufReader;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::{Mutex, MutexGuard};
use protocol::codec;
use protocol::frame::{read_frame, wipe, write_frame, MAX_FRAME_LEN};
use protocol::handshake::{Hello, Welcome, VERSION};
use protocol::message::{Request, Response};
use protocol::stream::Stream;
use protocol::ProtocolError;

use super::application::Application;
use super::deadline::Line;
use super::state::{AppKey, WorkerState};
use crate::rv;

/// Read buffer of a connection: small frames are read in one system call; larger ones go
/// straight into the frame buffer. Small, since an idle connection keeps it.
const READ_BUFFER: usize = 8 * 1024;

/// Longest a response may take to be accepted by a client's socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection handed over by the router.
pub struct Handed {
    /// The worker's number for the connection.
    pub id: u64,
    pub stream: Stream,
    /// Its place in the worker's budget of connections before their hello, given back
    /// once the hello is done.
    pub ticket: Option<crate::startups::Ticket>,
    /// Called once the hello is accepted.
    pub on_hello: Box<dyn FnOnce() + Send>,
    /// The TLS handshake is still to be done.
    pub tls: bool,
    pub peer: String,
    pub identity: Vec<u8>,
}

/// Serves one connection until the peer goes away or the stream is shut down.
pub fn serve(worker: &WorkerState, handed: Handed) {
    let Handed {
        id,
        stream,
        ticket,
        on_hello,
        tls,
        peer,
        mut identity,
    } = handed;
    let peer = peer.as_str();
    let stream = match (tls, stream) {
        (true, Stream::Tcp(tcp)) => {
            let Some(listener) = &worker.tls else {
                tracing::error!(peer, "TLS connection without TLS material");
                return;
            };
            let _ = tcp.set_read_timeout(Some(worker.settings.handshake_timeout));
            let _ = tcp.set_write_timeout(Some(worker.settings.handshake_timeout));
            let session = match listener.session() {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(peer, error = %e, "cannot start a TLS session");
                    return;
                }
            };
            match crate::tls::handshake(Box::new(session), tcp) {
                Ok((s, cert)) => {
                    identity = cert;
                    s
                }
                Err(e) => {
                    refused(worker);
                    tracing::warn!(peer, error = %e, "connection refused");
                    return;
                }
            }
        }
        (_, s) => s,
    };
    let Some((key, app, reader)) = handshake(stream, peer, identity, ticket, worker, id) else {
        refused(worker);
        return;
    };
    on_hello();
    let _ = reader
        .get_ref()
        .set_read_timeout(worker.settings.idle_timeout);
    // A client that stops reading its answers cannot hold this thread for ever.
    let _ = reader.get_ref().set_write_timeout(Some(WRITE_TIMEOUT));
    let metrics = &worker.metrics;
    // connections_open counts it since its hello (`handshake`).
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    tracing::info!(peer, client = app.id, "client connected");
    let line = worker.watchdog.watch(id, reader);
    let who = super::trace::identity(&key.1);
    let ended = request_loop(worker, &app, peer, &who, &line);
    worker.watchdog.unwatch(id);
    metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = ended {
        match e {
            ProtocolError::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::info!(peer, client = app.id, "client disconnected")
            }
            ProtocolError::Io(ref io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                tracing::info!(peer, "closing idle connection (--idle-timeout)")
            }
            e => tracing::warn!(peer, error = %e, "closing connection"),
        }
    }
    worker.detach(&key);
}

fn refused(worker: &WorkerState) {
    worker
        .metrics
        .connections_refused
        .fetch_add(1, Ordering::Relaxed);
}

/// Writes a refusal the client logs, with `reason`.
fn refuse(reader: &mut BufReader<Stream>, reason: String) {
    let _ = write_frame(
        reader.get_mut(),
        &Welcome::Refused {
            version: VERSION,
            reason,
        }
        .encode(),
        &mut Vec::new(),
    );
}

/// Reads and checks the hello and answers it. The connection leaves the budget of
/// connections before their hello (`ticket`) once its hello is valid, before it is counted
/// or answered: an accepted connection is never dropped by that budget afterwards.
fn handshake(
    stream: Stream,
    peer: &str,
    identity: Vec<u8>,
    ticket: Option<crate::startups::Ticket>,
    worker: &WorkerState,
    id: u64,
) -> Option<(AppKey, Arc<Application>, BufReader<Stream>)> {
    let _ = stream.set_read_timeout(Some(worker.settings.handshake_timeout));
    let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
    let mut buf = Vec::new();
    if let Err(e) = read_frame(&mut reader, &mut buf, 64) {
        tracing::warn!(peer, error = %e, "handshake failed: no valid hello");
        return None;
    }
    let hello = match Hello::decode(&buf) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(peer, error = %e, "handshake refused");
            refuse(
                &mut reader,
                format!("server speaks protocol version {VERSION}: {e}"),
            );
            return None;
        }
    };
    if ticket.is_some_and(|t| !t.release()) {
        // Dropped to make room just now: its socket is shut down.
        return None;
    }
    // Authenticated connections of the application: their own limit, which connections
    // before their hello never count against. The place is taken here (and given back if
    // the handshake fails), so that hellos at the same moment cannot pass the limit together.
    let open = worker
        .metrics
        .connections_open
        .fetch_add(1, Ordering::AcqRel);
    let release = || {
        worker
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::AcqRel);
    };
    if open >= worker.settings.max_connections as i64 {
        release();
        tracing::warn!(
            peer,
            open,
            "connection refused: --max-connections reached for this application"
        );
        refuse(
            &mut reader,
            format!("the application has {open} connections open already (--max-connections)"),
        );
        return None;
    }
    // With a policy, a client no identity matches is refused (deny by default).
    if let Some(identities) = worker.policy.identities() {
        let presented = crate::policy::Presented::of(&identity);
        if identities.find(&presented).is_none() {
            release();
            tracing::warn!(
                peer,
                presented = %presented.describe(),
                "handshake refused: no identity of the policy matches this client"
            );
            refuse(
                &mut reader,
                "no identity of the server's policy matches this client's credentials".into(),
            );
            return None;
        }
    }
    let key = (hello.client_id, identity);
    let app = match worker.attach(&key, hello.identify_objects) {
        Ok(app) => app,
        Err(reason) => {
            release();
            tracing::warn!(peer, reason, "handshake refused");
            refuse(&mut reader, reason);
            return None;
        }
    };
    let init_rv = worker.init_for(&hello, id);
    let welcome = Welcome::Accepted {
        version: VERSION,
        instance_id: worker.instance_id,
        init_rv: init_rv as u64,
    };
    if let Err(e) = write_frame(reader.get_mut(), &welcome.encode(), &mut Vec::new()) {
        tracing::warn!(peer, error = %e, "handshake failed");
        worker.detach(&key);
        release();
        return None;
    }
    Some((key, app, reader))
}

/// Serves the requests of one connection. Its [`Line`] is held but while the vendor works on a
/// call with a deadline: then the watchdog may answer for it ([`super::deadline`]).
fn request_loop(
    worker: &WorkerState,
    app: &Application,
    peer: &str,
    who: &str,
    line: &Mutex<Line>,
) -> Result<(), ProtocolError> {
    let mut frame = Vec::new();
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    let metrics = &worker.metrics;
    let mut line = line.lock();
    loop {
        if let Err(e) = read_frame(&mut line.reader, &mut frame, MAX_FRAME_LEN) {
            if worker.leaving.load(Ordering::Acquire) {
                retire(&mut line.reader);
            }
            return Err(e);
        }
        metrics
            .bytes_received
            .fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
        let request: Request = codec::decode(&frame)?;
        let d = request.descriptor();
        if d.carries_pin {
            wipe(&mut frame);
        }
        if worker.leaving.load(Ordering::Relaxed) {
            tracing::debug!(
                function = d.name,
                client = app.id,
                peer,
                "request retired, not executed: this worker is leaving"
            );
            retire(&mut line.reader);
            return Ok(());
        }
        let name = d.name;
        let traced = super::trace::arguments(&request);
        let started = Instant::now();
        let response = match worker.watchdog.limit(d) {
            Some(limit) => {
                line.begin(name, started, limit);
                let response = MutexGuard::unlocked(&mut line, || {
                    super::dispatch::dispatch(worker, app, request)
                });
                if !line.end() {
                    tracing::warn!(
                        function = name,
                        client = app.id,
                        peer,
                        ms = started.elapsed().as_millis() as u64,
                        "the vendor returned from an abandoned call at last; its answer is dropped"
                    );
                    return Ok(());
                }
                response
            }
            None => super::dispatch::dispatch(worker, app, request),
        };
        let r = CK_RV::try_from(response.rv()).unwrap_or(CKR_GENERAL_ERROR);
        metrics.call(name, r, started.elapsed());
        if let Some(arguments) = traced {
            let call = super::trace::Call {
                function: name,
                arguments: &arguments,
                response: &response,
                started,
            };
            super::trace::line(app.id, peer, who, &call);
        }
        match r {
            CKR_OK => {}
            _ if is_routine(name, r) => {
                tracing::debug!(function = name, rv = %rv::name(r), client = app.id, peer, "call answered")
            }
            _ => {
                tracing::info!(function = name, rv = %rv::name(r), client = app.id, peer, "call failed")
            }
        }
        codec::encode(&response, &mut out)?;
        write_frame(line.reader.get_mut(), &out, &mut scratch)?;
        metrics
            .bytes_sent
            .fetch_add(out.len() as u64 + 4, Ordering::Relaxed);
    }
}

/// Tells the client that this worker is leaving and did not execute its request (or, unasked,
/// will execute none), then closes the connection: the client sends the request again on a new
/// connection, whatever the function ([`Response::Retired`]). Best effort: a client gone
/// already needs nothing.
fn retire(reader: &mut BufReader<Stream>) {
    let mut out = Vec::new();
    if codec::encode(&Response::Retired, &mut out).is_ok() {
        let stream = reader.get_mut();
        let _ = write_frame(stream, &out, &mut Vec::new());
        let _ = std::io::Write::flush(stream);
        stream.shutdown(std::net::Shutdown::Write);
    }
}

/// Answers that are part of normal PKCS#11 use, logged at debug rather than as failures: the
/// two-call convention (v2.40 §5.2), Fabric's login on every session, and the per-attribute
/// results of C_GetAttributeValue (v2.40 §5.7.5: an attribute the object does not have, or
/// may not reveal), which clients meet asking for several at once.
fn is_routine(function: &str, rv: CK_RV) -> bool {
    match rv {
        CKR_BUFFER_TOO_SMALL | CKR_USER_ALREADY_LOGGED_IN => true,
        CKR_ATTRIBUTE_TYPE_INVALID | CKR_ATTRIBUTE_SENSITIVE => function == "C_GetAttributeValue",
        _ => false,
    }
}
