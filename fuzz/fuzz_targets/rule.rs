//! One `deny_targets`/`allow_targets` entry (`rules::Rule::parse`).
//! The input format is that of `fluidity::fuzzing::rule_input`; `fuzz/seeds/rule/` holds examples.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fluidity::fuzzing::rule_input(data));
