//! Per-node clocks with bounded rate drift.
//!
//! True time is the simulator's (nanoseconds since the run started). A node's clock runs at
//! `1 + rate_ppm / 1e6` of true time, with `|rate_ppm|` within the bound the lease assumes
//! (`Config::tolerated_drift_ppm`), and starts at an arbitrary reading; a restart starts a new
//! clock (a new process), possibly at zero. A paused node's clock keeps running, so when it
//! resumes its next input carries a reading that jumped.

use std::time::Duration;

use understudy::core::Time;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    started_at: u64,
    reading_at_start: u64,
    rate_ppm: i64,
}

impl Clock {
    pub fn new(started_at: u64, reading_at_start: u64, rate_ppm: i64) -> Clock {
        assert!(rate_ppm.abs() < 1_000_000, "clock rate {rate_ppm} ppm");
        Clock {
            started_at,
            reading_at_start,
            rate_ppm,
        }
    }

    /// The node's reading at true time `now` (nanoseconds).
    pub fn read(&self, now: u64) -> Time {
        assert!(now >= self.started_at, "reading a clock before it started");
        let elapsed = (now - self.started_at) as i128;
        let local = elapsed * (1_000_000 + self.rate_ppm as i128) / 1_000_000;
        Time::from_duration(Duration::from_nanos(self.reading_at_start + local as u64))
    }
}
