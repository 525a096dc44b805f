//! `host:port` targets of CONNECT and absolute-form URLs (`tunnel::authority::parse_target`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        fluidity::fuzzing::authority(text);
    }
});
