//! The destination policy: rule lists, then `TargetPolicy::check` on a name, port and resolved address.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

#[derive(Arbitrary, Debug)]
struct Input {
    allow_private: bool,
    deny: Vec<String>,
    allow: Vec<String>,
    name: String,
    port: u16,
    addr: IpAddr,
}

fuzz_target!(|input: Input| {
    fluidity::fuzzing::policy(
        input.allow_private,
        &input.deny,
        &input.allow,
        &input.name,
        input.port,
        input.addr,
    );
});
