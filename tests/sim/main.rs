//! Deterministic simulation of the replication core (placeholder).
