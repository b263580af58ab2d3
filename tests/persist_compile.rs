//! What may be stored in a root is checked by the compiler: every kind of type the `Persist`
//! and `GlobalPersist` traits refuse fails to compile with a message naming it
//! (`tests/persist/fail/*.rs`, messages in the `.stderr` files next to them), and the kinds
//! they admit compile (`tests/persist/pass/*.rs`). One test binary, so the trybuild project
//! is built once. Regenerate the messages with `TRYBUILD=overwrite cargo test --test
//! persist_compile` (and read them).

#[test]
fn refused_root_types_fail_to_compile_and_admitted_ones_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/persist/fail/*.rs");
    t.pass("tests/persist/pass/*.rs");
}
