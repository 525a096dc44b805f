//! `FLUIDITY_*` environment variables through `load_agent` and `load_server`.
//! The input format is that of `fluidity::fuzzing::config_env_input`; `fuzz/seeds/config_env/` holds examples.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fluidity::fuzzing::config_env_input(data));
