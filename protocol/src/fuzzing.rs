//! The entry point shared by the `cargo fuzz` target (`protocol/fuzz`) and the corpus replay
//! test: everything a server does with bytes from the network before a PKCS#11 call.

use crate::codec;
use crate::frame::{read_frame, MAX_FRAME_LEN};
use crate::handshake::Hello;
use crate::message::{Request, Response};

/// Reads frames from `data` as a server would (and as a shim would read responses), decoding
/// each as a hello, a request and a response. Must never panic, whatever `data` holds, and
/// never allocate more than one frame's announced size, itself bounded by
/// [`MAX_FRAME_LEN`].
pub fn decode_stream(data: &[u8]) {
    let mut input = data;
    let mut frame = Vec::new();
    while read_frame(&mut input, &mut frame, MAX_FRAME_LEN).is_ok() {
        let _ = Hello::decode(&frame);
        let _ = codec::decode::<Request>(&frame);
        let _ = codec::decode::<Response>(&frame);
    }
}
