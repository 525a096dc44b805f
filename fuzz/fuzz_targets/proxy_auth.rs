//! `proxy_auth` values (`ProxyAuth::parse`) and the agent's `Proxy-Authorization` check.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    credential: String,
    header: Vec<u8>,
}

fuzz_target!(|input: Input| {
    fluidity::fuzzing::proxy_auth(&input.credential, &input.header);
});
