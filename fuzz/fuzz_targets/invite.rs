//! An invite file (`invite::parse`, `check`, `sealed_parts`, `open`, `seal`).
//! The input format is that of `fluidity::fuzzing::invite_input`; `fuzz/seeds/invite/` holds examples.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fluidity::fuzzing::invite_input(data));
