//! Fuzz target: arbitrary bytes read as the frames a peer sends (hello, requests, responses).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol::fuzzing::decode_stream(data);
});
