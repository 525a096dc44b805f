//! `certs init --server-san NAME` and `certs issue NAME`: name checks, then the issued certificate's common name.
//! The input format is that of `fluidity::fuzzing::cert_names_input`; `fuzz/seeds/cert_names/` holds examples.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fluidity::fuzzing::cert_names_input(data));
