//! The process's own memory, for the tests that measure it, and why those tests run alone.
//!
//! Caller, agent, server and targets all live in the test process, so the process's resident memory is what a
//! memory test reads. Another test running in the same process at the same time would add its own connections,
//! buffers and threads to the figure, and the assertion would judge them instead of the test's own traffic.
//!
//! So each memory test is the only test in its file (`large_body.rs`, `slow_reader.rs`, `soak.rs`). Cargo builds
//! every file in `tests/` as a binary of its own and runs the test binaries one after another, never two at once;
//! a binary with one test runs nothing beside it. [`assert_alone_in_file`] checks that the file still holds one
//! test, so a test added beside a memory test fails at once instead of making its figures drift.
#![allow(
    dead_code,
    reason = "every test crate compiles the whole harness and each uses a different part of this module"
)]

/// Resident memory of this process (VmRSS) and its peak (VmHWM), in KiB.
pub fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Panics unless `source` (the test file, by `include_str!`) declares exactly one test: see the module docs.
pub fn assert_alone_in_file(source: &str) {
    let tests = source
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with("#[test]") || line.starts_with("#[tokio::test"))
        .count();
    assert_eq!(
        tests, 1,
        "a memory test must be the only test in its file (tests/common/memory.rs says why)"
    );
}
