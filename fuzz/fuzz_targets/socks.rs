//! The SOCKS5/SOCKS4 handshake of the agent's proxy port (`agent::socks::Handshake`).
//! The input format is that of `fluidity::fuzzing::socks_input`; `fuzz/seeds/socks/` holds examples.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fluidity::fuzzing::socks_input(data));
