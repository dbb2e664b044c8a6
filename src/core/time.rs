//! [`Time`]: a node's monotonic clock reading, handed to the core as an input value.
//!
//! The core never reads a clock. The shell passes the time with every input that needs it
//! (`Tick`, `Receive`, `Propose`), measured since some origin of the shell's choosing (its
//! process start). Readings are monotonic within one run of a node; after a restart the
//! origin may start again at zero, which is harmless because a restarted core keeps no time
//! from its previous run (see `Core::new`).

use std::fmt;
use std::ops::Add;
use std::time::Duration;

/// A reading of the local monotonic clock, as a `Duration` since an origin of the shell's choice.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(Duration);

impl Time {
    pub const ZERO: Time = Time(Duration::ZERO);
    /// Later than any reading: for a deadline that never comes (compare only; adding to it
    /// overflows).
    pub const MAX: Time = Time(Duration::MAX);

    pub const fn from_duration(since_origin: Duration) -> Time {
        Time(since_origin)
    }

    pub const fn from_millis(ms: u64) -> Time {
        Time(Duration::from_millis(ms))
    }

    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this reading is; zero if it is not after it.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, rhs: Duration) -> Time {
        Time(self.0 + rhs)
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
