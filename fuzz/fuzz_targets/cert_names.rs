//! `certs init --server-san NAME` and `certs issue NAME`: name checks, then the issued certificate's common name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = std::str::from_utf8(data) {
        fluidity::fuzzing::cert_names(name);
    }
});
