//! The replication core (placeholder until the core lands).
