//! Gathering: the writer's next batch waits a little for the proposers it just answered.
//!
//! The writer keeps one append in flight (`APPENDS_INFLIGHT_MAX`), so proposals made while
//! it is out go together in the next one. An application whose clients each wait for their
//! answer before they ask again (most clients: one request, one reply) then splits into
//! two cohorts that take turns: when append A is answered, the batch B that gathered during
//! A's commit goes out at once, and A's clients, answered a moment later, come back while B
//! is out and must wait for B's commit before theirs is even sent. Every commit (a WAL
//! write and fsync on each node, a message to each backup and its answers) then carries
//! half the clients, and the fsyncs are what is scarce (`benches/README.md`, "Unpipelined
//! SET: gathering").
//!
//! So when an append with two or more proposals is answered, the next batch waits until as
//! many proposals as it carried have been made since the answer (its proposers, if they
//! come back), until a whole batch is waiting, or until half the answered append's round
//! trip has passed (at most [`GATHER_WAIT_MAX`]), whichever comes first, and then goes out
//! with all of them.
//!
//! Where the proposers do not come back (an open loop: requests arriving on their own
//! schedule), waiting buys larger batches at the price of latency. Such a loop brings
//! about half a batch's worth in half a round trip, so a wait is counted as paid only if
//! two thirds of the proposals it waited for came; after one that did not, the next
//! [`GATHER_PROBE_FIRST`] batches go out without waiting, twice as many after each further
//! one, up to [`GATHER_PROBE_EVERY`]. A lone proposal never waits (the answered append had
//! one proposal, or none was answered yet), nor does any batch where the platform has no
//! sub-millisecond timer (tokio's timers tick in milliseconds, too coarse for a fraction of
//! a commit; Linux's `timerfd` is used), nor any when `UNDERSTUDY_GATHER=off` is in the
//! environment of the application.
//!
//! Nothing here touches what is committed or in what order: proposals still go out in the
//! order they were made, each in exactly one append. Only when they leave moves, by at most
//! [`GATHER_WAIT_MAX`].

use std::io;
use std::time::{Duration, Instant};

/// The longest a batch waits for the proposers of the last one to come back.
pub(super) const GATHER_WAIT_MAX: Duration = Duration::from_millis(1);

/// After a wait that did not pay, this many batches go out without one before the next
/// wait, twice as many after each further such wait, up to [`GATHER_PROBE_EVERY`].
pub(super) const GATHER_PROBE_FIRST: u32 = 8;

/// With gathering off, every this many batches one waits again, to learn whether the
/// proposers have started coming back.
pub(super) const GATHER_PROBE_EVERY: u32 = 256;

/// Whether gathering is on for drivers started from now: unless `UNDERSTUDY_GATHER` is
/// `off` (or `0`, `false`, `no`).
pub(super) fn enabled_by_env() -> bool {
    match std::env::var("UNDERSTUDY_GATHER") {
        Ok(value) => !matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "off" | "0" | "false" | "no"
        ),
        Err(_) => true,
    }
}

/// A wait the writer should make before it sends its next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wait {
    /// Send once this many proposals have been made since the last append was answered
    /// (as many as it carried).
    pub expected: usize,
    /// Send after this long in any case.
    pub timeout: Duration,
}

/// The gathering policy: the writer reports what it sent and how each wait went, and asks
/// before each batch whether to wait.
#[derive(Debug)]
pub(super) struct Gather {
    /// The last append sent: when, with how many proposals.
    last_sent: Option<(Instant, usize)>,
    /// Batches to send without a wait before the next one waits: 0 while waits pay; after
    /// a wait that did not, [`GATHER_PROBE_FIRST`], doubling with each further one that
    /// does not, up to [`GATHER_PROBE_EVERY`].
    skip: u32,
    /// Batches sent without a wait since the last wait.
    skipped: u32,
}

impl Gather {
    pub(super) fn new() -> Gather {
        Gather {
            last_sent: None,
            skip: 0,
            skipped: 0,
        }
    }

    /// Called once the last append has been answered (at `answered`), with `waiting`
    /// proposals ready for the next one and `count_max` the most one append may carry: the
    /// wait to make, if any. The wait ends half the answered append's round trip after its
    /// answer, not after `now`: a proposal made when the writer has been idle since (the
    /// first after a quiet spell) goes out at once.
    pub(super) fn plan(
        &mut self,
        now: Instant,
        answered: Instant,
        waiting: usize,
        count_max: usize,
    ) -> Option<Wait> {
        let (sent_at, count) = self.last_sent?;
        if count < 2 || waiting >= count_max {
            return None;
        }
        let round_trip = answered.saturating_duration_since(sent_at);
        let timeout = (round_trip / 2)
            .min(GATHER_WAIT_MAX)
            .saturating_sub(now.saturating_duration_since(answered));
        if timeout.is_zero() {
            return None;
        }
        if self.skipped < self.skip {
            self.skipped += 1;
            return None;
        }
        Some(Wait {
            expected: count,
            timeout,
        })
    }

    /// How the wait `plan` asked for went: `came_back` proposals were made since the
    /// answer. It paid if at least two thirds of those expected came back; where proposals
    /// arrive on their own schedule, half a round trip brings at most about half a batch's
    /// worth, so such waits do not pay.
    pub(super) fn waited(&mut self, wait: Wait, came_back: usize) {
        let paid = came_back.saturating_mul(3) >= wait.expected.saturating_mul(2);
        self.skip = if paid {
            0
        } else {
            (self.skip * 2).clamp(GATHER_PROBE_FIRST, GATHER_PROBE_EVERY)
        };
        self.skipped = 0;
    }

    /// An append with `count` proposals went out at `now`.
    pub(super) fn sent(&mut self, now: Instant, count: usize) {
        self.last_sent = Some((now, count));
    }
}

/// A one-shot timer with a resolution finer than tokio's millisecond: a `timerfd` on
/// `CLOCK_MONOTONIC`, registered with tokio's reactor.
#[cfg(target_os = "linux")]
pub(super) struct ShortTimer {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

#[cfg(target_os = "linux")]
impl ShortTimer {
    /// Creates the timer; fails where the kernel or the runtime cannot give one (the
    /// driver then sends without waiting).
    pub(super) fn new() -> io::Result<ShortTimer> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system call; the descriptor it returns is owned by nobody else.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which keeps it open, and
        // unchanged, until it deregisters it on drop.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|error| error.into_parts().1)?;
        Ok(ShortTimer { fd })
    }

    /// Sets the timer to expire `after` from now (a zero `after` disarms it). Resetting
    /// also clears an expiry not yet read.
    pub(super) fn set(&self, after: Duration) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let value = libc::timespec {
            tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `spec` outlives the call; a null old value is allowed.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until the timer set last expires.
    pub(super) async fn expired(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        loop {
            let mut ready = self.fd.readable().await?;
            let read = ready.try_io(|fd| {
                let mut expirations = [0u8; 8];
                // SAFETY: reads at most 8 bytes into a buffer of 8.
                let n = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        expirations.as_mut_ptr().cast(),
                        expirations.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match read {
                Ok(result) => return result,
                // Readiness left over from an expiry that a reset cleared: wait again.
                Err(_would_block) => continue,
            }
        }
    }
}

/// Elsewhere there is no timer fine enough, and batches go out without waiting.
#[cfg(not(target_os = "linux"))]
pub(super) struct ShortTimer;

#[cfg(not(target_os = "linux"))]
impl ShortTimer {
    pub(super) fn new() -> io::Result<ShortTimer> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub(super) fn set(&self, _after: Duration) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub(super) async fn expired(&self) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 * 1024;

    fn sent_ago(gather: &mut Gather, now: Instant, ago: Duration, count: usize) {
        gather.sent(now - ago, count);
    }

    #[test]
    fn a_lone_proposal_never_waits() {
        let now = Instant::now() + Duration::from_secs(1);
        let mut gather = Gather::new();
        assert_eq!(gather.plan(now, now, 0, MAX), None, "nothing sent yet");
        sent_ago(&mut gather, now, Duration::from_micros(800), 1);
        assert_eq!(gather.plan(now, now, 0, MAX), None);
        assert_eq!(gather.plan(now, now, 5, MAX), None);
    }

    #[test]
    fn waits_for_the_answered_proposers_for_half_the_round_trip() {
        let now = Instant::now() + Duration::from_secs(1);
        let mut gather = Gather::new();
        sent_ago(&mut gather, now, Duration::from_micros(800), 25);
        assert_eq!(
            gather.plan(now, now, 20, MAX),
            Some(Wait {
                expected: 25,
                timeout: Duration::from_micros(400)
            })
        );
        // A slow round trip waits at most GATHER_WAIT_MAX.
        sent_ago(&mut gather, now, Duration::from_millis(30), 100);
        assert_eq!(
            gather.plan(now, now, 10, MAX),
            Some(Wait {
                expected: 100,
                timeout: GATHER_WAIT_MAX
            })
        );
        // A full batch is already waiting: no reason to wait.
        assert_eq!(gather.plan(now, now, MAX, MAX), None);
    }

    #[test]
    fn the_wait_is_counted_from_the_answer() {
        let now = Instant::now() + Duration::from_secs(1);
        let mut gather = Gather::new();
        // Sent 1.1 ms ago, answered 300 us ago: a round trip of 800 us, so 100 us are left
        // of the 400 us wait.
        sent_ago(&mut gather, now, Duration::from_micros(1100), 25);
        let answered = now - Duration::from_micros(300);
        assert_eq!(
            gather.plan(now, answered, 0, MAX),
            Some(Wait {
                expected: 25,
                timeout: Duration::from_micros(100)
            })
        );
        // The writer idle since the answer: the first proposal after it goes at once, and
        // that is not counted as a wait that did not pay.
        let answered = now - Duration::from_secs(2);
        sent_ago(&mut gather, now, Duration::from_secs(3), 25);
        assert_eq!(gather.plan(now, answered, 1, MAX), None);
        assert_eq!(gather.skip, 0);
        assert!(gather.plan(now, now, 1, MAX).is_some());
    }

    #[test]
    fn waits_that_do_not_pay_back_off_until_the_next_probe() {
        let now = Instant::now() + Duration::from_secs(1);
        let mut gather = Gather::new();
        sent_ago(&mut gather, now, Duration::from_micros(600), 30);
        let wait = gather.plan(now, now, 0, MAX).expect("a wait");
        // Two thirds came back: paid, and the next batch waits too.
        gather.waited(wait, 20);
        let wait = gather.plan(now, now, 0, MAX).expect("still on");
        // Fewer: the next GATHER_PROBE_FIRST batches go without, then one probes.
        gather.waited(wait, 19);
        let mut skips = Vec::new();
        for _ in 0..12 {
            let mut skipped = 0;
            let wait = loop {
                match gather.plan(now, now, 0, MAX) {
                    Some(wait) => break wait,
                    None => skipped += 1,
                }
                assert!(skipped <= GATHER_PROBE_EVERY, "never probes again");
            };
            skips.push(skipped);
            gather.waited(wait, 0);
        }
        assert_eq!(
            skips,
            [8, 16, 32, 64, 128, 256, 256, 256, 256, 256, 256, 256],
            "probes back off to one in GATHER_PROBE_EVERY"
        );
        assert_eq!(skips[0], GATHER_PROBE_FIRST);
        // A probe that pays turns it on at once.
        let wait = loop {
            if let Some(wait) = gather.plan(now, now, 0, MAX) {
                break wait;
            }
        };
        gather.waited(wait, 30);
        assert!(gather.plan(now, now, 0, MAX).is_some());
        assert!(gather.plan(now, now, 0, MAX).is_some());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_short_timer_expires_after_its_time_and_not_before() {
        let Ok(timer) = ShortTimer::new() else {
            return; // no timerfd on this platform: batches never wait
        };
        let start = Instant::now();
        timer.set(Duration::from_micros(300)).expect("set");
        timer.expired().await.expect("expired");
        let took = start.elapsed();
        assert!(took >= Duration::from_micros(300), "{took:?}");
        // A reset clears an expiry not yet read: the next wait is the new one's.
        timer.set(Duration::from_micros(50)).expect("set");
        std::thread::sleep(Duration::from_micros(200));
        let start = Instant::now();
        timer.set(Duration::from_millis(20)).expect("reset");
        timer.expired().await.expect("expired");
        assert!(
            start.elapsed() >= Duration::from_millis(20),
            "{:?}",
            start.elapsed()
        );
        // Disarmed, it does not fire.
        timer.set(Duration::ZERO).expect("disarm");
        let waited = tokio::time::timeout(Duration::from_millis(30), timer.expired()).await;
        assert!(waited.is_err(), "a disarmed timer fired");
    }
}
