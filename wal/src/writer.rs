//! The group-commit writer: one thread owns the [`Wal`]; any number of appenders hand it
//! records through a bounded queue. The thread writes everything queued while its last
//! fsync ran with one `write`, then syncs once, so concurrent appenders share fsyncs.
//!
//! LSNs are assigned when a record is queued (under the queue's lock, so queue order is LSN
//! order) and records are encoded straight into the queue's buffer: one copy of the payload,
//! one CRC, no allocation per record. Appenders either block in [`Writer::wait_durable`] or
//! are told through the `on_durable` callback (how the async shell hears of progress).
//!
//! Two ways to queue. The blocking calls ([`Writer::append`], [`Writer::append_encoded`],
//! [`Writer::truncate_prefix`], ...) wait for queue space, and the control operations for
//! their completion. The `queue_*` calls never wait, for a caller that must not stall (the
//! node's core loop sends heartbeats between its writes): [`Writer::queue_encoded`] leaves
//! keeping the queue bounded to the caller (it checks [`Writer::has_room`] before it takes
//! on more work), and `queue_truncate_*` return a ticket to look up with
//! [`Writer::control_done`] once `on_durable` reports a batch.
//!
//! After any failed write or fsync the writer is failed for good: every call returns
//! `Error::Poisoned` and [`Writer::failure`] says what happened.
//!
//! Test-only fault knob: in a debug build (`cfg(debug_assertions)`, which is what the
//! process tests run), `UNDERSTUDY_TEST_FSYNC_DELAY_MS=n` in the environment makes the
//! writer thread sleep `n` ms before every fsync, a stand-in for a slow disk. A release
//! build never reads it.

use std::mem;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::format::{encode_record, RecordKind, VerifiedRecords, RECORD_PAYLOAD_LEN_MAX};
use crate::log::{SyncPolicy, Wal};
use crate::mark::DurableMark;
use crate::reader::Reader;
use crate::types::{Epoch, Lsn};

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub sync: SyncPolicy,
    /// Under [`SyncPolicy::Batch`], the longest a written record waits for its fsync.
    pub sync_interval: Duration,
    /// Appenders block while this many bytes are queued and not yet written
    /// (DESIGN invariant 7: memory is bounded by configuration, not by load).
    pub queue_bytes_max: usize,
    /// The durable mark to keep ([`crate::mark`]): raised after every fsync before
    /// `on_durable` hears of it, lowered (and fsynced) before every cut of the log's end.
    pub mark: Option<Arc<DurableMark>>,
    /// A file the writer installs, on its own thread, the moment a write or fsync fails and
    /// before anyone hears of the failure: it holds the durable LSN from before the failure
    /// (decimal). The page cache may still show records the disk lost, and a later fsync
    /// need not say so; the next start reads the file and cuts the log back to that LSN.
    /// Written here, no kill between the failure and the caller's reaction can skip it;
    /// without fsync if the durable install fails ([`crate::mark::install_marker`]).
    pub failure_marker: Option<PathBuf>,
    /// Tests only (debug builds): the fsync with this 1-based number fails as an `EIO`
    /// would, and the writer with it.
    #[cfg(debug_assertions)]
    pub fail_sync_number: Option<u64>,
}

impl Default for WriterOptions {
    fn default() -> WriterOptions {
        WriterOptions {
            sync: SyncPolicy::Always,
            sync_interval: Duration::from_millis(10),
            queue_bytes_max: 64 << 20,
            mark: None,
            failure_marker: None,
            #[cfg(debug_assertions)]
            fail_sync_number: None,
        }
    }
}

/// What the writer has done, as told to `on_durable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub written_lsn: Lsn,
    pub durable_lsn: Lsn,
    /// The epoch of the record at `durable_lsn` (`Epoch::ZERO` if the log holds none), so a
    /// listener can tell this report from one about a record since truncated and rewritten.
    pub durable_epoch: Epoch,
    /// The writer has failed (see [`Writer::failure`]); nothing more will become durable.
    pub failed: bool,
    /// How long this batch's fdatasync took, if it synced (for an fsync latency histogram).
    pub sync_duration: Option<Duration>,
}

type OnDurable = Box<dyn Fn(Progress) + Send + Sync>;

enum Op {
    /// Records encoded into a buffer.
    Encoded(Vec<u8>),
    /// Records received already encoded and verified.
    Received(VerifiedRecords),
    TruncateSuffix(Lsn),
    TruncatePrefix(Lsn),
    Reset(Lsn),
    Sync,
}

struct State {
    ops: Vec<Op>,
    queued_bytes: usize,
    /// Spare encode buffers, so steady-state appends allocate nothing.
    spare: Vec<Vec<u8>>,
    next_lsn: Lsn,
    /// Epoch of the last queued record; `Epoch::ZERO` when unknown (after a truncation).
    last_epoch: Epoch,
    written_lsn: Lsn,
    durable_lsn: Lsn,
    first_lsn: Lsn,
    /// Control operations queued and done, for waiting on them.
    control_queued: u64,
    control_done: u64,
    failure: Option<String>,
    shutdown: bool,
    /// Threads waiting on `Shared::progress`. The writer thread notifies only when this is
    /// non-zero: a notify is a futex syscall even with nobody waiting, and the sidecar,
    /// which learns of progress through the callback, would pay two per batch for nothing.
    progress_waiters: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer thread. Only the writer thread waits on it, and only while `ops` is
    /// empty (checked under the lock), so a producer need notify only when it makes `ops`
    /// non-empty: a later producer finds the writer already woken or not yet waiting. This
    /// saves a futex syscall per append under load.
    work: Condvar,
    /// Wakes appenders waiting for durability, completion or queue space.
    progress: Condvar,
    options: WriterOptions,
    on_durable: Option<OnDurable>,
    /// The test-only fsync delay (module docs); `None` in a release build.
    sync_delay: Option<Duration>,
}

/// The test-only fsync delay: `UNDERSTUDY_TEST_FSYNC_DELAY_MS` (module docs).
#[cfg(debug_assertions)]
fn test_sync_delay() -> Option<Duration> {
    let ms = std::env::var("UNDERSTUDY_TEST_FSYNC_DELAY_MS").ok()?;
    ms.trim().parse().ok().map(Duration::from_millis)
}

/// A release build is never slowed down on purpose.
#[cfg(not(debug_assertions))]
fn test_sync_delay() -> Option<Duration> {
    None
}

impl Shared {
    /// Whether `incoming` more bytes fit in the queue. An empty queue always takes a
    /// batch, however large, so nothing waits forever.
    fn fits(&self, state: &State, incoming: usize) -> bool {
        state.queued_bytes == 0 || state.queued_bytes + incoming <= self.options.queue_bytes_max
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock aborts the process (panic = "abort"), so a
        // poisoned mutex cannot be observed in production; tests may unwind, so recover.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle appenders share. Dropping it stops the thread after it has written and
/// synced everything queued.
pub struct Writer {
    shared: Arc<Shared>,
    reader: Reader,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread, which takes ownership of `wal`.
    pub fn spawn(
        wal: Wal,
        options: WriterOptions,
        on_durable: Option<OnDurable>,
    ) -> Result<Writer> {
        let reader = wal.reader();
        let state = State {
            ops: Vec::new(),
            queued_bytes: 0,
            spare: Vec::new(),
            next_lsn: wal.last_lsn().next(),
            last_epoch: wal.last_epoch(),
            written_lsn: wal.last_lsn(),
            durable_lsn: wal.durable_lsn(),
            first_lsn: wal.first_lsn(),
            progress_waiters: 0,
            control_queued: 0,
            control_done: 0,
            failure: None,
            shutdown: false,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            work: Condvar::new(),
            progress: Condvar::new(),
            options,
            on_durable,
            sync_delay: test_sync_delay(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || run(wal, &thread_shared))
            .map_err(|e| Error::io(crate::error::IoOp::Create, "wal-writer thread", e))?;
        Ok(Writer {
            shared,
            reader,
            thread: Some(thread),
        })
    }

    pub fn reader(&self) -> Reader {
        self.reader.clone()
    }

    /// LSN of the last record written to the file (not necessarily durable).
    pub fn written_lsn(&self) -> Lsn {
        self.shared.lock().written_lsn
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.shared.lock().durable_lsn
    }

    /// LSN of the last record queued.
    pub fn last_lsn(&self) -> Lsn {
        self.shared.lock().next_lsn.prev()
    }

    pub fn first_lsn(&self) -> Lsn {
        self.shared.lock().first_lsn
    }

    /// What failed, if the writer has failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.lock().failure.clone()
    }

    /// Waits for queue space, then returns the locked state.
    fn lock_with_space(&self, incoming: usize) -> Result<MutexGuard<'_, State>> {
        let mut state = self.shared.lock();
        loop {
            if state.failure.is_some() {
                return Err(Error::Poisoned);
            }
            if self.shared.fits(&state, incoming) {
                return Ok(state);
            }
            state = self.wait_progress(state);
        }
    }

    /// The locked state, without waiting for anything; `Poisoned` if the writer has failed.
    fn lock_live(&self) -> Result<MutexGuard<'_, State>> {
        let state = self.shared.lock();
        if state.failure.is_some() {
            return Err(Error::Poisoned);
        }
        Ok(state)
    }

    /// Whether `incoming` more bytes fit in the queue now (`queue_bytes_max`; an empty queue
    /// takes anything). Only the writer thread frees space, so for the only appender the
    /// answer holds until it queues something itself.
    pub fn has_room(&self, incoming: usize) -> bool {
        self.shared.fits(&self.shared.lock(), incoming)
    }

    /// Waits once on the progress condvar, counted in `progress_waiters`.
    fn wait_progress<'a>(&self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        state.progress_waiters += 1;
        let mut state = self
            .shared
            .progress
            .wait(state)
            .unwrap_or_else(|e| e.into_inner());
        state.progress_waiters -= 1;
        state
    }

    /// Queues one record of `kind` per payload, in `epoch`, and returns their LSN range at
    /// once. Use [`Writer::wait_durable`] (or the callback) to learn when they are durable.
    ///
    /// # Correctness
    /// `epoch` must not be lower than the last record's (a caller bug: asserted).
    pub fn append<'p>(
        &self,
        epoch: Epoch,
        kind: RecordKind,
        payloads: impl IntoIterator<Item = &'p [u8]> + Clone,
    ) -> Result<(Lsn, Lsn)> {
        let mut incoming = 0usize;
        let mut count = 0usize;
        for payload in payloads.clone() {
            if payload.len() > RECORD_PAYLOAD_LEN_MAX {
                return Err(Error::RecordTooLarge {
                    len: payload.len() as u64,
                    max: RECORD_PAYLOAD_LEN_MAX as u64,
                });
            }
            incoming += crate::format::record_len(payload.len());
            count += 1;
        }
        let mut state = self.lock_with_space(incoming)?;
        assert!(
            epoch >= state.last_epoch,
            "append in epoch {epoch} after a record of epoch {}",
            state.last_epoch
        );
        let first_lsn = state.next_lsn;
        if count == 0 {
            // Nothing queued, so `ops` stays as it was (see `Shared::work`).
            return Ok((first_lsn, first_lsn.prev()));
        }
        let mut lsn = first_lsn;
        let state = &mut *state;
        let was_empty = state.ops.is_empty();
        let buf = match state.ops.last_mut() {
            Some(Op::Encoded(buf)) => buf,
            _ => {
                let buf = state.spare.pop().unwrap_or_default();
                state.ops.push(Op::Encoded(buf));
                match state.ops.last_mut() {
                    Some(Op::Encoded(buf)) => buf,
                    _ => unreachable!("just pushed"),
                }
            }
        };
        for payload in payloads {
            encode_record(buf, lsn, epoch, kind, payload);
            lsn = lsn.next();
        }
        state.queued_bytes += incoming;
        state.next_lsn = lsn;
        state.last_epoch = epoch;
        if was_empty {
            self.shared.work.notify_one();
        }
        Ok((first_lsn, lsn.prev()))
    }

    /// Queues records received already encoded; they are written byte for byte. Waits for
    /// queue space.
    pub fn append_encoded(&self, records: VerifiedRecords) -> Result<(Lsn, Lsn)> {
        let state = self.lock_with_space(records.bytes().len())?;
        self.push_encoded(state, records)
    }

    /// [`Writer::append_encoded`] without waiting for queue space: the queue may go past
    /// `queue_bytes_max` by what this adds. A caller that must keep memory bounded checks
    /// [`Writer::has_room`] before it takes on the records.
    pub fn queue_encoded(&self, records: VerifiedRecords) -> Result<(Lsn, Lsn)> {
        let state = self.lock_live()?;
        self.push_encoded(state, records)
    }

    fn push_encoded(
        &self,
        mut state: MutexGuard<'_, State>,
        records: VerifiedRecords,
    ) -> Result<(Lsn, Lsn)> {
        if records.first_lsn() != state.next_lsn {
            return Err(Error::OutOfOrder {
                last: state.next_lsn.prev(),
                found: records.first_lsn(),
            });
        }
        if records.first_epoch() < state.last_epoch {
            return Err(Error::BadRecord {
                reason: crate::error::Corruption::EpochOrder {
                    previous: state.last_epoch.get(),
                    found: records.first_epoch().get(),
                },
            });
        }
        let range = (records.first_lsn(), records.last_lsn());
        state.queued_bytes += records.bytes().len();
        state.next_lsn = records.last_lsn().next();
        state.last_epoch = records.last_epoch();
        let was_empty = state.ops.is_empty();
        state.ops.push(Op::Received(records));
        if was_empty {
            self.shared.work.notify_one();
        }
        Ok(range)
    }

    /// Blocks until every record up to `lsn` is durable.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        self.wait_until(self.shared.lock(), |state| state.durable_lsn >= lsn)
    }

    /// Waits on the progress condvar until `done` holds, or the writer has failed.
    fn wait_until(
        &self,
        mut state: MutexGuard<'_, State>,
        done: impl Fn(&State) -> bool,
    ) -> Result<()> {
        loop {
            if done(&state) {
                return Ok(());
            }
            if state.failure.is_some() {
                return Err(Error::Poisoned);
            }
            state = self.wait_progress(state);
        }
    }

    /// Queues a control operation and waits until the writer has done it.
    fn control(&self, op: Op, next_lsn: Option<Lsn>) -> Result<()> {
        let ticket = self.control_queue(op, next_lsn)?;
        self.wait_until(self.shared.lock(), |state| state.control_done >= ticket)
    }

    /// Queues a control operation and returns its ticket at once. Appends queued after it
    /// continue from `next_lsn`, if given.
    fn control_queue(&self, op: Op, next_lsn: Option<Lsn>) -> Result<u64> {
        let mut state = self.lock_live()?;
        state.ops.push(op);
        state.control_queued += 1;
        let ticket = state.control_queued;
        if let Some(next_lsn) = next_lsn {
            state.next_lsn = next_lsn;
            state.last_epoch = Epoch::ZERO;
        }
        self.shared.work.notify_one();
        Ok(ticket)
    }

    /// Whether the control operation `ticket` (from a `queue_*` call) is done. It is done
    /// before the `on_durable` report of its batch, which then says how durable the log is
    /// after it.
    pub fn control_done(&self, ticket: u64) -> bool {
        self.shared.lock().control_done >= ticket
    }

    /// Makes everything queued so far durable, whatever the policy; returns the durable LSN.
    pub fn sync(&self) -> Result<Lsn> {
        self.control(Op::Sync, None)?;
        Ok(self.durable_lsn())
    }

    /// Cuts the log after `keep_through` (see [`Wal::truncate_suffix`]), after everything
    /// queued before it; returns when the cut is durable.
    pub fn truncate_suffix(&self, keep_through: Lsn) -> Result<()> {
        let ticket = self.queue_truncate_suffix(keep_through)?;
        self.wait_until(self.shared.lock(), |state| state.control_done >= ticket)
    }

    /// [`Writer::truncate_suffix`] without waiting: appends queued from now on continue
    /// after `keep_through` at once; the cut is done when [`Writer::control_done`] says so.
    /// Until then a [`Reader`] may still see the records after `keep_through`.
    pub fn queue_truncate_suffix(&self, keep_through: Lsn) -> Result<u64> {
        let mut state = self.lock_live()?;
        let next_lsn = keep_through.next().min(state.next_lsn);
        state.ops.push(Op::TruncateSuffix(keep_through));
        state.control_queued += 1;
        let ticket = state.control_queued;
        state.next_lsn = next_lsn;
        state.last_epoch = Epoch::ZERO;
        self.shared.work.notify_one();
        Ok(ticket)
    }

    /// Deletes whole segments below `lsn` (see [`Wal::truncate_prefix`]).
    pub fn truncate_prefix(&self, lsn: Lsn) -> Result<()> {
        self.control(Op::TruncatePrefix(lsn), None)
    }

    /// [`Writer::truncate_prefix`] without waiting; done when [`Writer::control_done`] says
    /// so (then [`Writer::first_lsn`] and the reader show the new start).
    pub fn queue_truncate_prefix(&self, lsn: Lsn) -> Result<u64> {
        self.control_queue(Op::TruncatePrefix(lsn), None)
    }

    /// Replaces the log by an empty one starting at `next_lsn` (see [`Wal::reset`]).
    pub fn reset(&self, next_lsn: Lsn) -> Result<()> {
        self.control(Op::Reset(next_lsn), Some(next_lsn))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Lowers the durable mark (if any) to `lsn` before the log is cut there.
fn lower_mark(shared: &Shared, lsn: Lsn) -> Result<()> {
    match &shared.options.mark {
        Some(mark) => mark.lower(lsn),
        None => Ok(()),
    }
}

/// The writer thread: take everything queued, write it, sync per policy, publish.
fn run(mut wal: Wal, shared: &Shared) {
    let mut last_sync = Instant::now();
    #[cfg(debug_assertions)]
    let mut syncs = 0u64;
    let mut batch: Vec<Op> = Vec::new();
    loop {
        // Take the whole queue, or wait for work (or for the batch-sync deadline).
        let mut state = shared.lock();
        loop {
            if !state.ops.is_empty() || state.failure.is_some() {
                break;
            }
            let unsynced = state.durable_lsn < state.written_lsn;
            if state.shutdown && !unsynced {
                return;
            }
            if unsynced {
                let deadline = last_sync + shared.options.sync_interval;
                let now = Instant::now();
                if now >= deadline || state.shutdown {
                    break;
                }
                state = shared
                    .work
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            } else {
                state = shared.work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        }
        if state.failure.is_some() {
            return;
        }
        mem::swap(&mut batch, &mut state.ops);
        state.queued_bytes = 0;
        let shutting_down = state.shutdown;
        // Appenders blocked on a full queue may go on while this batch is written.
        if state.progress_waiters > 0 {
            shared.progress.notify_all();
        }
        drop(state);

        // Write it all, in order; control operations complete in place.
        let mut controls_done = 0u64;
        let mut sync_requested = false;
        let mut result: Result<()> = Ok(());
        let mut spare = Vec::new();
        for op in batch.drain(..) {
            if result.is_err() {
                break;
            }
            result = match op {
                Op::Encoded(mut buf) => {
                    let r = wal.append_trusted(&buf);
                    buf.clear();
                    spare.push(buf);
                    r
                }
                Op::Received(records) => wal.append_encoded(&records).map(|_| ()),
                Op::TruncateSuffix(lsn) => {
                    controls_done += 1;
                    // The mark comes down first: a crash between the two leaves it below
                    // the log's end, never above.
                    lower_mark(shared, lsn).and_then(|()| wal.truncate_suffix(lsn))
                }
                Op::TruncatePrefix(lsn) => {
                    controls_done += 1;
                    wal.truncate_prefix(lsn).map(|_| ())
                }
                Op::Reset(lsn) => {
                    controls_done += 1;
                    lower_mark(shared, lsn.prev()).and_then(|()| wal.reset(lsn))
                }
                Op::Sync => {
                    controls_done += 1;
                    sync_requested = true;
                    Ok(())
                }
            };
        }
        let written = wal.last_lsn();
        // Sync once for the whole batch.
        let must_sync = match shared.options.sync {
            SyncPolicy::Always => true,
            SyncPolicy::Batch => {
                sync_requested
                    || shutting_down
                    || last_sync.elapsed() >= shared.options.sync_interval
            }
        };
        let mut sync_duration = None;
        if result.is_ok() && must_sync && wal.durable_lsn() < written {
            let sync_started = Instant::now();
            if let Some(delay) = shared.sync_delay {
                std::thread::sleep(delay);
            }
            #[cfg(debug_assertions)]
            let fail = {
                syncs += 1;
                shared.options.fail_sync_number == Some(syncs)
            };
            #[cfg(not(debug_assertions))]
            let fail = false;
            result = if fail {
                Err(crate::error::Error::io(
                    crate::error::IoOp::Fsync,
                    "(test) failed fsync",
                    std::io::Error::from_raw_os_error(libc::EIO),
                ))
            } else {
                wal.sync().map(|_| ())
            };
            last_sync = Instant::now();
            sync_duration = Some(last_sync - sync_started);
        } else if must_sync {
            last_sync = Instant::now();
        }
        // The mark names what is durable before anyone hears of it (an acknowledgement may
        // follow at once). A mark that cannot be written fails the writer like an fsync.
        if result.is_ok() {
            if let Some(mark) = &shared.options.mark {
                result = mark.raise(wal.durable_lsn());
            }
        }

        // The failure's marker is installed before the failure is published (the field's
        // docs). A marker installed without fsync, or not at all, is named in the failure.
        let marker_failure = match (&result, &shared.options.failure_marker) {
            (Err(_), Some(path)) => match crate::mark::install_marker(path, wal.durable_lsn()) {
                Ok(crate::mark::Installed::Durably) => None,
                Ok(crate::mark::Installed::NotDurably(e)) => Some(format!(
                    "its marker is written but not durable (a start after a reboot may not see it): {e}"
                )),
                Err(e) => Some(format!("its marker cannot be written: {e}")),
            },
            _ => None,
        };
        let progress = {
            let mut state = shared.lock();
            if let Err(e) = result {
                let mut failure = match std::error::Error::source(&e) {
                    Some(source) => format!("{e}: {source}"),
                    None => e.to_string(),
                };
                if let Some(marker) = marker_failure {
                    failure.push_str(&format!("; {marker}"));
                }
                state.failure = Some(failure);
            }
            state.written_lsn = written;
            state.durable_lsn = wal.durable_lsn();
            state.first_lsn = wal.first_lsn();
            state.control_done += controls_done;
            for buf in spare {
                if state.spare.len() < 4 {
                    state.spare.push(buf);
                }
            }
            if state.progress_waiters > 0 {
                shared.progress.notify_all();
            }
            Progress {
                written_lsn: state.written_lsn,
                durable_lsn: state.durable_lsn,
                durable_epoch: wal.epoch_at(state.durable_lsn).unwrap_or(Epoch::ZERO),
                failed: state.failure.is_some(),
                sync_duration,
            }
        };
        if let Some(callback) = &shared.on_durable {
            callback(progress);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Options;

    fn records(first: u64, count: u64, epoch: u64) -> VerifiedRecords {
        let payloads: Vec<Vec<u8>> = (first..first + count)
            .map(|lsn| format!("record-{lsn}-epoch-{epoch}").into_bytes())
            .collect();
        VerifiedRecords::encode(
            Lsn(first),
            Epoch(epoch),
            RecordKind::App,
            payloads.iter().map(|p| &p[..]),
            1024,
        )
        .unwrap()
    }

    /// A queued suffix cut returns a ticket at once and takes effect in queue order: the
    /// records queued after it continue after the cut (in a later epoch), and once
    /// `control_done` says so the log holds the old records up to the cut and the new ones
    /// after it.
    #[test]
    fn queued_suffix_cut_takes_effect_in_queue_order() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), Options::default()).unwrap();
        let writer = Writer::spawn(wal, WriterOptions::default(), None).unwrap();
        assert!(writer.has_room(usize::MAX), "an empty queue takes anything");
        writer.queue_encoded(records(1, 5, 1)).unwrap();
        let ticket = writer.queue_truncate_suffix(Lsn(3)).unwrap();
        assert_eq!(writer.last_lsn(), Lsn(3));
        writer.queue_encoded(records(4, 2, 2)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !writer.control_done(ticket) {
            assert!(Instant::now() < deadline, "the queued cut was never done");
            std::thread::sleep(Duration::from_millis(1));
        }
        writer.wait_durable(Lsn(5)).unwrap();
        let mut read = writer.reader().iter_from(Lsn(1)).unwrap();
        let batch = read.next_batch(1 << 20, Lsn(5)).unwrap().unwrap();
        assert_eq!((batch.first_lsn, batch.last_lsn), (Lsn(1), Lsn(5)));
        let mut expected = records(1, 3, 1).bytes().to_vec();
        expected.extend_from_slice(records(4, 2, 2).bytes());
        assert_eq!(&batch.bytes[..], &expected[..]);
    }

    /// A failed fsync installs the failure's marker, holding the LSN durable before it,
    /// before anyone hears of the failure: `on_durable` finds it already there.
    #[cfg(debug_assertions)]
    #[test]
    fn a_failed_fsync_leaves_its_marker_before_it_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path().join("wal"), Options::default()).unwrap();
        let marker = dir.path().join("fsync-failed");
        let seen = Arc::new(Mutex::new(None));
        let on_durable = {
            let marker = marker.clone();
            let seen = Arc::clone(&seen);
            Box::new(move |progress: Progress| {
                if progress.failed {
                    let text = std::fs::read_to_string(&marker).ok();
                    seen.lock()
                        .unwrap()
                        .get_or_insert((progress.durable_lsn, text));
                }
            })
        };
        let options = WriterOptions {
            failure_marker: Some(marker.clone()),
            fail_sync_number: Some(3),
            ..WriterOptions::default()
        };
        let writer = Writer::spawn(wal, options, Some(on_durable)).unwrap();
        writer.queue_encoded(records(1, 2, 1)).unwrap();
        writer.wait_durable(Lsn(2)).unwrap();
        writer.queue_encoded(records(3, 2, 1)).unwrap();
        writer.wait_durable(Lsn(4)).unwrap();
        assert!(!marker.exists(), "no failure yet");
        writer.queue_encoded(records(5, 2, 1)).unwrap();
        assert!(
            writer.wait_durable(Lsn(6)).is_err(),
            "the third fsync fails"
        );
        assert!(writer.failure().unwrap().contains("(test) failed fsync"));
        // `on_durable` runs after the waiters are woken.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (durable, text) = loop {
            if let Some(seen) = seen.lock().unwrap().clone() {
                break seen;
            }
            assert!(Instant::now() < deadline, "the failure was never reported");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(durable, Lsn(4));
        assert_eq!(
            text.as_deref(),
            Some(crate::mark::encode(Lsn(4)).as_str()),
            "the marker was there when it was reported"
        );
    }
    /// A marker that cannot be installed durably is written anyway, and the failure says so.
    #[cfg(debug_assertions)]
    #[test]
    fn a_failed_fsync_whose_marker_cannot_be_installed_durably_still_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path().join("wal"), Options::default()).unwrap();
        let marker = dir.path().join("fsync-failed");
        // The atomic install's temporary file cannot be created.
        std::fs::create_dir(crate::fs::tmp_path(&marker)).unwrap();
        let options = WriterOptions {
            failure_marker: Some(marker.clone()),
            fail_sync_number: Some(2),
            ..WriterOptions::default()
        };
        let writer = Writer::spawn(wal, options, None).unwrap();
        writer.queue_encoded(records(1, 2, 1)).unwrap();
        writer.wait_durable(Lsn(2)).unwrap();
        writer.queue_encoded(records(3, 2, 1)).unwrap();
        assert!(
            writer.wait_durable(Lsn(4)).is_err(),
            "the second fsync fails"
        );
        let failure = writer.failure().unwrap();
        assert!(failure.contains("not durable"), "{failure}");
        assert_eq!(
            crate::mark::read_installed(&marker).unwrap(),
            crate::mark::MarkFile::At(Lsn(2))
        );
    }
}
