//! Arbitrary bytes from a peer into the frame decoder: it must never panic, and whatever
//! decodes must re-encode to the same frame.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    sluice_protocol::frame::fuzz_decode(bytes);
});
