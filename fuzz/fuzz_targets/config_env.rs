//! `FLUIDITY_*` environment variables through `load_agent` and `load_server`.
#![no_main]

use arbitrary::Arbitrary;
use fluidity::fuzzing::ENV_VARS;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Var {
    /// Index into `ENV_VARS`.
    key: u8,
    value: String,
}

fuzz_target!(|vars: Vec<Var>| {
    let vars: Vec<(String, String)> = vars
        .into_iter()
        .map(|var| {
            let key = ENV_VARS[usize::from(var.key) % ENV_VARS.len()];
            (key.to_owned(), var.value)
        })
        .collect();
    fluidity::fuzzing::config_env(&vars);
});
