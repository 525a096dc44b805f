//! `host:port` targets of CONNECT and absolute-form URLs (`tunnel::authority::parse_target`).
//! The input format is that of `fluidity::fuzzing::authority_input`; `fuzz/seeds/authority/` holds examples.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fluidity::fuzzing::authority_input(data));
