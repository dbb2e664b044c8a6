//! The invariants of DESIGN.md, one file each, checked by the simulator as the events that
//! could break them happen (every write, promotion, accepted proposal and persist), which
//! amounts to checking after every step. `Core::validate` runs after every step as well.
//! Invariant 5 (`members.rs`) is that of membership changes (the core's `members.rs`).

pub mod committed_survive;
pub mod lease;
pub mod log_matching;
pub mod members;
pub mod one_primary;

/// A broken invariant: which one, and what was seen.
#[derive(Debug)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

pub fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}
