//! Compile-fail tests: each file in `tests/ui` is one mistake, and its
//! `.stderr` is the message a user sees. `tests/pass` must keep compiling.
//! Regenerate the messages with `TRYBUILD=overwrite` and read each one.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/pass/*.rs");
}
