//! The agent's persisted state file (read from disk after every boot): a parse never panics, and
//! whatever parses is written back to bytes that parse to the same state. Seeds:
//! tests/fixtures/agent-state/.
#![no_main]

use tugboot_agent::update::state::AgentState;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(state) = AgentState::parse(data) {
        let again = AgentState::parse(&state.to_bytes()).expect("re-encoded state must parse");
        assert_eq!(state, again);
    }
});
