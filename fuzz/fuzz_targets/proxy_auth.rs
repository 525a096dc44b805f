//! `proxy_auth` values (`ProxyAuth::parse`) and the agent's `Proxy-Authorization` check.
//! The input format is that of `fluidity::fuzzing::proxy_auth_input`; `fuzz/seeds/proxy_auth/` holds examples.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fluidity::fuzzing::proxy_auth_input(data));
