//! Hop-by-hop and `Proxy-*` header removal and upgrade detection (`tunnel::headers`).
#![no_main]

use arbitrary::Arbitrary;
use fluidity::fuzzing::HEADER_NAMES;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Name {
    /// One of the names the rules care about.
    Known(u8),
    /// Any bytes (skipped unless a valid header name).
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Field {
    name: Name,
    value: Vec<u8>,
}

fuzz_target!(|fields: Vec<Field>| {
    let pairs: Vec<(&[u8], &[u8])> = fields
        .iter()
        .map(|field| {
            let name = match &field.name {
                Name::Known(i) => HEADER_NAMES[usize::from(*i) % HEADER_NAMES.len()].as_bytes(),
                Name::Raw(bytes) => bytes.as_slice(),
            };
            (name, field.value.as_slice())
        })
        .collect();
    fluidity::fuzzing::headers(&pairs);
});
