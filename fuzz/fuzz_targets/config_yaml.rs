//! A YAML config file through `load_agent`, `load_server` and `save_agent` (`--save`).
//! The input format is that of `fluidity::fuzzing::config_yaml_input`; `fuzz/seeds/config_yaml/` holds examples.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fluidity::fuzzing::config_yaml_input(data));
