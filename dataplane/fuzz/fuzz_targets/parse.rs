//! The frame parser on arbitrary bytes: it must return `Ok` or `Err` for
//! every input, never panic, and what it returns must describe the frame
//! it was given (offsets inside the frame, in order).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::wire;

fuzz_target!(|frame: &[u8]| {
    if let Ok(p) = wire::parse(frame) {
        assert!(p.l3_offset <= p.l4_offset, "L3 after L4: {p:?}");
        assert!(p.l4_offset <= frame.len(), "L4 past the frame: {p:?}");
        assert!(p.ip_version == 4 || p.ip_version == 6, "version: {p:?}");
    }
});
