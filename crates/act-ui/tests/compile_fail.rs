//! A typed reaction on an event that does not exist is a compile error.

#[test]
fn a_reaction_on_a_misspelled_typed_event_does_not_compile() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/typed_reaction.rs");
    t.compile_fail("tests/ui/misspelled_event.rs");
}
