//! The clock behind every timing the core relies on: [`BootInstant`], a reading of
//! `CLOCK_BOOTTIME`.
//!
//! Why not `std::time::Instant`: on Linux it reads `CLOCK_MONOTONIC`, which stops while the
//! machine is suspended (a paused or live-migrated VM, a laptop lid). A primary whose VM
//! is suspended for a second and resumed would read its clock as if no time had passed and
//! go on serving under a lease that ran out long ago, while the backups, whose clocks kept
//! running, have already elected another primary: two nodes serving writes. The lease,
//! the failover timeout and the election timers are only as good as the clock they are
//! measured on, so every `now` the shell hands the core (`Input::Tick`, `Receive`,
//! `Propose`) and the other failover timings of the shell (how long ago a peer was heard,
//! how long a hand-over at shutdown may take) come from here. `CLOCK_BOOTTIME` is
//! `CLOCK_MONOTONIC` plus the time spent in suspend: it never goes back and it never
//! stops (DESIGN, "Membership and the learner state": "a clock that keeps running through
//! suspend").
//!
//! What it does not do: timers. Tokio's sleeps and intervals (the core loop's ticker)
//! stay on tokio's clock; they only decide *when* the loop takes a reading, and a late
//! tick after a resume reads the true time. Latency figures for `/metrics` also stay on
//! `Instant`: they are not used to decide anything.

use std::time::Duration;

/// The clock read: `CLOCK_BOOTTIME` where the kernel has it (Linux ≥ 2.6.39, Android);
/// elsewhere `CLOCK_MONOTONIC`, the best a platform without it offers.
#[cfg(any(target_os = "linux", target_os = "android"))]
const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;

/// A point in time on `CLOCK_BOOTTIME`: time since the machine booted, suspend included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootInstant(Duration);

impl BootInstant {
    /// Reads the clock.
    pub fn now() -> BootInstant {
        BootInstant(read(CLOCK))
    }

    /// Time since boot, suspend included.
    pub fn since_boot(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this is; zero if `earlier` is later (it cannot be, for two
    /// readings taken in that order: the clock never goes back).
    pub fn duration_since(self, earlier: BootInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// How long ago this was.
    pub fn elapsed(self) -> Duration {
        BootInstant::now().duration_since(self)
    }
}

impl std::ops::Add<Duration> for BootInstant {
    type Output = BootInstant;
    fn add(self, rhs: Duration) -> BootInstant {
        BootInstant(self.0 + rhs)
    }
}

/// When this node last heard from any peer, readable off the core loop (the client port
/// asks whether the node is cut off): microseconds on the boot clock, 0 before the first.
#[derive(Debug, Default)]
pub struct LastHeard(std::sync::atomic::AtomicU64);

impl LastHeard {
    /// A message from a peer arrived at `at`.
    pub fn note(&self, at: BootInstant) {
        let micros = u64::try_from(at.0.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0
            .fetch_max(micros, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long nothing has been heard from any peer; `None` before the first message.
    pub fn silence(&self) -> Option<Duration> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            micros => Some(
                BootInstant::now()
                    .0
                    .saturating_sub(Duration::from_micros(micros)),
            ),
        }
    }
}

/// Until when this node may serve reads as primary, and in which epoch, readable off the
/// core loop (the client port checks it before it releases a reply in follow mode). The
/// core loop stores it after every step (`Core::serving_until`); between steps it goes
/// stale only towards the past (a lease a later step would extend), never beyond what the
/// core granted.
#[derive(Debug, Default)]
pub struct ServingUntil(std::sync::Mutex<Option<(u64, Option<BootInstant>)>>);

impl ServingUntil {
    /// Stores the deadline: `None` while this node may not serve; else the epoch and the
    /// deadline, `None` for no bound.
    pub fn set(&self, until: Option<(u64, Option<BootInstant>)>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = until;
    }

    /// Whether this node serves in `epoch` with its deadline still ahead of the clock,
    /// read now.
    pub fn holds_now(&self, epoch: u64) -> bool {
        let until = *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match until {
            Some((serving, deadline)) if serving == epoch => {
                deadline.is_none_or(|deadline| BootInstant::now() < deadline)
            }
            _ => false,
        }
    }
}

/// One `clock_gettime` of `clock`.
fn read(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    // clock_gettime fails only for a clock id the kernel does not know (EINVAL) or a bad
    // pointer (EFAULT); `CLOCK` exists on every kernel this builds for.
    assert_eq!(
        rc,
        0,
        "clock_gettime({clock}) failed: {}",
        std::io::Error::last_os_error()
    );
    assert!(
        ts.tv_sec >= 0 && (0..1_000_000_000).contains(&ts.tv_nsec),
        "clock_gettime({clock}) returned {}s {}ns",
        ts.tv_sec,
        ts.tv_nsec
    );
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reading is `CLOCK_BOOTTIME`: it lies between two direct `clock_gettime` calls on
    /// that clock taken just before and just after it (`CLOCK_MONOTONIC` would lie below
    /// both on any machine that was ever suspended, and `CLOCK_REALTIME` far above).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn reading_is_clock_boottime() {
        for _ in 0..1000 {
            let before = read(libc::CLOCK_BOOTTIME);
            let reading = BootInstant::now().since_boot();
            let after = read(libc::CLOCK_BOOTTIME);
            assert!(
                before <= reading && reading <= after,
                "{reading:?} is not between {before:?} and {after:?}"
            );
        }
    }

    /// Readings never go back, and time spent between them is counted.
    #[test]
    fn readings_are_monotonic() {
        let first = BootInstant::now();
        let mut last = first;
        for _ in 0..10_000 {
            let now = BootInstant::now();
            assert!(now >= last, "{now:?} before {last:?}");
            last = now;
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(first.elapsed() >= Duration::from_millis(20));
        assert_eq!(first.duration_since(last), Duration::ZERO);
    }
}
