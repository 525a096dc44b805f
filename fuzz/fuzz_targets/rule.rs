//! One `deny_targets`/`allow_targets` entry (`server::policy::Rule::parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        fluidity::fuzzing::rule(text);
    }
});
