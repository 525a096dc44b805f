//! Hop-by-hop and `Proxy-*` header removal and upgrade detection (`tunnel::headers`).
//! The input format is that of `fluidity::fuzzing::headers_input`; `fuzz/seeds/headers/` holds examples.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fluidity::fuzzing::headers_input(data));
