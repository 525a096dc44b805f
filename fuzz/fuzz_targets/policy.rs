//! The destination policy: rule lists, then `TargetPolicy::check` on a name, port and resolved address.
//! The input format is that of `fluidity::fuzzing::policy_input`; `fuzz/seeds/policy/` holds examples.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fluidity::fuzzing::policy_input(data));
