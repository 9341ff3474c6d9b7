//! Every seed of the `agent_state` fuzz target goes through the same checks in a plain test run:
//! valid state files parse and round-trip, `bad-*` files are refused with an error.

use std::fs;
use std::path::Path;

use tugboot_agent::update::state::AgentState;

#[test]
fn agent_state_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/agent-state");
    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(&path).unwrap();
        match AgentState::parse(&bytes) {
            Ok(state) => {
                assert!(!name.starts_with("bad-"), "{name} should be refused");
                assert_eq!(
                    AgentState::parse(&state.to_bytes()).unwrap(),
                    state,
                    "{name}"
                );
            }
            Err(e) => assert!(name.starts_with("bad-"), "{name} refused: {e}"),
        }
        seen += 1;
    }
    assert!(seen >= 4, "seeds missing in {}", dir.display());
}
