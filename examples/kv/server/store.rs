//! The replicated state: a map of keys to values with optional expiry, as a
//! [`StateMachine`].
//!
//! # Time, and why `apply` stays deterministic
//! `apply` never reads a clock. The store keeps its own, `clock_ms`: the largest `now_ms`
//! of any record applied, so it is the same on every node after the same records and never
//! goes backwards, even when a new primary's wall clock is behind the old one's. Inside
//! `apply` a key is expired when its `expire_at_ms <= clock_ms`: it is removed the moment a
//! write touches it (SET NX sees it absent, INCR starts from 0, DEL does not count it), and
//! each record also purges up to [`EXPIRED_PURGE_MAX`] expired keys in expiry order, so
//! memory is reclaimed by the ordinary write traffic (reads write no record, so a store
//! that is only read keeps its expired keys in memory, unseen, until the next write).
//! Nothing else ever removes a key, so every node holds the same keys.
//!
//! Reads run outside `apply`, on the primary, with `max(wall clock, clock_ms)`: a key whose
//! time has passed is not returned, whether or not a record has purged it yet. A read whose
//! answer that wall clock decides (a key it reads expires after `clock_ms` and by the wall
//! clock) first commits a barrier record stamped with the wall clock and answers by
//! `clock_ms` once it is applied: otherwise a later primary whose clock is behind would
//! show again a key a client was told is gone (`Pipeline::flush_reads` in `mod.rs`).
//!
//! A primary whose clock runs far ahead moves `clock_ms` ahead with it, and keys with a
//! time to live then expire early; correcting that clock does not bring them back.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes};
use understudy::client::{BoxError, Capture, StateMachine};
use understudy::Lsn;

use super::codec::{self, Batch, Condition, Expiry, Op};
use super::resp::Reply;
use super::shards::Shards;

/// Expired keys one record purges at most, so a record's cost stays bounded.
pub const EXPIRED_PURGE_MAX: usize = 64;

/// What `apply` answers for a record that is not a command (it changes nothing).
pub const NOT_A_COMMAND: &str = "ERR the replicated record is not a command of this version";

const SNAPSHOT_MAGIC: &[u8; 8] = b"USKVSNAP";
const SNAPSHOT_VERSION: u16 = 1;

/// A value and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    /// Milliseconds since the UNIX epoch; `None` lives until deleted.
    pub expire_at_ms: Option<u64>,
}

impl Entry {
    fn is_live(&self, now_ms: u64) -> bool {
        self.expire_at_ms.is_none_or(|at| at > now_ms)
    }
}

/// A key as the map holds it: up to [`KEY_INLINE_MAX`] bytes in the map's own slot, a
/// longer one on the heap. A lookup compares the key's bytes, and a short key's are then
/// where the probe already is, not behind a pointer (`Store::apply` ~1,000 -> ~760 ns per
/// SET with 16-byte keys).
/// Hashes and compares as its bytes, so the map is looked up by `&[u8]`.
#[derive(Clone)]
pub enum Key {
    Inline {
        len: u8,
        bytes: [u8; KEY_INLINE_MAX],
    },
    Heap(Bytes),
}

/// The longest key kept inline in a [`Key`].
const KEY_INLINE_MAX: usize = 30;

impl Key {
    pub fn new(key: &Bytes) -> Key {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= KEY_INLINE_MAX => {
                let mut bytes = [0; KEY_INLINE_MAX];
                bytes[..key.len()].copy_from_slice(key);
                Key::Inline { len, bytes }
            }
            _ => Key::Heap(key.clone()),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes, which `Borrow<[u8]>` requires.
        self.as_bytes().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", Bytes::copy_from_slice(self.as_bytes()))
    }
}

/// How the store hashes keys: foldhash, seeded at random once per process, so that clients
/// that choose the keys cannot predict where they land (the hash map's defence against
/// keys made to collide). With the standard SipHash-1-3, hashing was 12 % of the primary
/// server's CPU under pipelined SETs of 16-byte keys (`perf`), three lookups per SET.
pub type KeyHasher = foldhash::fast::RandomState;

/// The key-value state machine.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Store {
    /// A hash map, keyed by [`KeyHasher`]: a write looks its key up two or three times (a
    /// SET checks expiry and condition in one lookup, then inserts). Applying records of 16
    /// SETs over 100,000 keys of 16 bytes took 1.5-1.8 us per SET with an ordered map
    /// against 1.0-1.1 us with this one (then with SipHash and three lookups). Nothing
    /// needs the order but the snapshot, which sorts the keys it writes. In shards, so
    /// that a snapshot is captured without copying the map ([`Shards`]).
    entries: Shards,
    /// `(expire_at_ms, key)` of every entry that has an expiry, for the purge.
    expiries: BTreeSet<(u64, Bytes)>,
    /// The largest `now_ms` applied.
    clock_ms: u64,
}

impl StateMachine for Store {
    /// One reply per operation of the record, in order; none for the read barrier; one
    /// error for a record that does not decode.
    type Output = Vec<Reply>;

    fn apply(&mut self, _lsn: Lsn, command: &[u8]) -> Vec<Reply> {
        match codec::decode(command) {
            Ok(batch) => self.apply_batch(batch),
            // Every node refuses it the same way, so refusing keeps them equal.
            Err(_) => vec![Reply::error(NOT_A_COMMAND)],
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.capture()()
    }

    /// Keeps the map as it is (a clone of [`Shards`] shares its shards) and leaves the sort
    /// and the encoding to the job: with 300,000 keys of 128-byte values, `snapshot` held
    /// the application for 93-108 ms, every client waiting (`benches/README.md`, "The
    /// snapshot's pause").
    fn capture(&self) -> Capture {
        let clock_ms = self.clock_ms;
        let entries = self.entries.clone();
        Box::new(move || encode_snapshot(clock_ms, &entries))
    }

    fn restore(&mut self, _lsn: Lsn, snapshot: &[u8]) -> Result<(), BoxError> {
        *self = Store::from_snapshot(snapshot)?;
        Ok(())
    }
}

/// The snapshot of a store whose clock is `clock_ms` and which holds `map`.
///
/// Format: magic "USKVSNAP" | version:u16 | clock_ms:u64 | count:u64 |
///   (key_len:u32 key value_len:u32 value has_expiry:u8 [expire_at_ms:u64]) * count
fn encode_snapshot(clock_ms: u64, map: &Shards) -> Vec<u8> {
    // In key order, so that every node writes the same bytes for the same state.
    let mut entries: Vec<(&[u8], &Entry)> = Vec::with_capacity(map.len());
    entries.extend(map.iter().map(|(key, entry)| (key.as_bytes(), entry)));
    entries.sort_unstable_by_key(|&(key, _)| key);
    let body: usize = entries
        .iter()
        .map(|(key, entry)| {
            let expiry = if entry.expire_at_ms.is_some() { 8 } else { 0 };
            4 + key.len() + 4 + entry.value.len() + 1 + expiry
        })
        .sum();
    let mut out = Vec::with_capacity(SNAPSHOT_MAGIC.len() + 2 + 8 + 8 + body);
    out.put_slice(SNAPSHOT_MAGIC);
    out.put_u16_le(SNAPSHOT_VERSION);
    out.put_u64_le(clock_ms);
    out.put_u64_le(entries.len() as u64);
    for (key, entry) in entries {
        for blob in [key, &entry.value[..]] {
            out.put_u32_le(u32::try_from(blob.len()).expect("keys and values fit a record"));
            out.put_slice(blob);
        }
        match entry.expire_at_ms {
            None => out.put_u8(0),
            Some(at) => {
                out.put_u8(1);
                out.put_u64_le(at);
            }
        }
    }
    out
}

impl Store {
    /// The store's clock: the largest `now_ms` applied.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    fn apply_batch(&mut self, batch: Batch) -> Vec<Reply> {
        self.clock_ms = self.clock_ms.max(batch.now_ms);
        self.apply_batch_purge();
        batch.ops.into_iter().map(|op| self.apply_op(op)).collect()
    }

    /// Removes up to [`EXPIRED_PURGE_MAX`] expired keys, earliest expiry first.
    fn apply_batch_purge(&mut self) {
        for _ in 0..EXPIRED_PURGE_MAX {
            let Some((at, key)) = self.expiries.first().cloned() else {
                return;
            };
            if at > self.clock_ms {
                return;
            }
            self.remove(&key);
        }
    }

    fn apply_op(&mut self, op: Op) -> Reply {
        match op {
            Op::Set {
                key,
                value,
                condition,
                expiry,
                get,
            } => self.apply_set(key, value, condition, expiry, get),
            Op::Del { keys } => {
                let mut removed = 0;
                for key in keys {
                    self.expire_if_due(&key);
                    if self.remove(&key).is_some() {
                        removed += 1;
                    }
                }
                Reply::Integer(removed)
            }
            Op::IncrBy { key, delta } => self.apply_incr_by(key, delta),
            Op::MSet { pairs } => {
                for (key, value) in pairs {
                    self.insert(key, value, None);
                }
                Reply::ok()
            }
            Op::FlushAll => {
                self.entries.clear();
                self.expiries.clear();
                Reply::ok()
            }
        }
    }

    fn apply_set(
        &mut self,
        key: Bytes,
        value: Bytes,
        condition: Condition,
        expiry: Expiry,
        get: bool,
    ) -> Reply {
        // The old entry, if live: one lookup, and a second only to drop an expired one.
        let mut old = self.entries.get(&key[..]);
        if old.is_some_and(|entry| !entry.is_live(self.clock_ms)) {
            self.remove(&key);
            old = None;
        }
        let answer = |old: Option<&Entry>, set: bool| match (get, old) {
            (true, Some(entry)) => Reply::Bulk(entry.value.clone()),
            (true, None) => Reply::Nil,
            (false, _) if set => Reply::ok(),
            (false, _) => Reply::Nil,
        };
        let allowed = match condition {
            Condition::Always => true,
            Condition::IfAbsent => old.is_none(),
            Condition::IfPresent => old.is_some(),
        };
        if !allowed {
            return answer(old, false);
        }
        let reply = answer(old, true);
        let expire_at_ms = match expiry {
            Expiry::Never => None,
            Expiry::Keep => old.and_then(|entry| entry.expire_at_ms),
            Expiry::At(at) => Some(at),
        };
        if expire_at_ms.is_some_and(|at| at <= self.clock_ms) {
            // Set with a time already past (EXAT/PXAT): the key is gone at once, as in Redis.
            self.remove(&key);
        } else {
            self.insert(key, value, expire_at_ms);
        }
        reply
    }

    fn apply_incr_by(&mut self, key: Bytes, delta: i64) -> Reply {
        self.expire_if_due(&key);
        let (current, expire_at_ms) = match self.entries.get(&key[..]) {
            None => (0, None),
            Some(entry) => match parse_integer(&entry.value) {
                Some(current) => (current, entry.expire_at_ms),
                None => return Reply::error("ERR value is not an integer or out of range"),
            },
        };
        let Some(next) = current.checked_add(delta) else {
            return Reply::error("ERR increment or decrement would overflow");
        };
        // INCR keeps the key's time to live, as in Redis.
        self.insert(key, Bytes::from(next.to_string()), expire_at_ms);
        Reply::Integer(next)
    }

    /// Removes `key` if its expiry is due on the store's clock.
    fn expire_if_due(&mut self, key: &Bytes) {
        if self
            .entries
            .get(&key[..])
            .is_some_and(|entry| !entry.is_live(self.clock_ms))
        {
            self.remove(key);
        }
    }

    fn insert(&mut self, key: Bytes, value: Bytes, expire_at_ms: Option<u64>) {
        if let Some(at) = expire_at_ms {
            self.expiries.insert((at, key.clone()));
        }
        let old = self.entries.insert(
            Key::new(&key),
            Entry {
                value,
                expire_at_ms,
            },
        );
        if let Some(old_at) = old.and_then(|old| old.expire_at_ms) {
            if Some(old_at) != expire_at_ms {
                self.expiries.remove(&(old_at, key));
            }
        }
    }

    fn remove(&mut self, key: &Bytes) -> Option<Entry> {
        let entry = self.entries.remove(&key[..])?;
        if let Some(at) = entry.expire_at_ms {
            let removed = self.expiries.remove(&(at, key.clone()));
            assert!(removed, "expiry index lacks a key with an expiry");
        }
        Some(entry)
    }

    /// The value of a live key at `now_ms`.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<&Bytes> {
        self.live(key, now_ms).map(|entry| &entry.value)
    }

    /// The entry of a live key at `now_ms`.
    pub fn live(&self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.entries.get(key).filter(|entry| entry.is_live(now_ms))
    }

    /// Whether `key` has an expiry in `(after_ms, through_ms]`: live at the first time, gone
    /// at the second.
    pub fn expires_between(&self, key: &[u8], after_ms: u64, through_ms: u64) -> bool {
        self.entries
            .get(key)
            .and_then(|entry| entry.expire_at_ms)
            .is_some_and(|at| after_ms < at && at <= through_ms)
    }

    /// Whether any key has an expiry in `(after_ms, through_ms]`.
    pub fn any_expires_between(&self, after_ms: u64, through_ms: u64) -> bool {
        let Some(from) = after_ms.checked_add(1) else {
            return false;
        };
        self.expiries
            .range((from, Bytes::new())..)
            .next()
            .is_some_and(|(at, _)| *at <= through_ms)
    }

    /// Live keys at `now_ms`.
    pub fn live_count(&self, now_ms: u64) -> usize {
        self.entries.len() - self.expired_count(now_ms)
    }

    /// Live keys with an expiry at `now_ms`.
    pub fn expiring_count(&self, now_ms: u64) -> usize {
        self.expiries.len() - self.expired_count(now_ms)
    }

    /// Keys expired at `now_ms` and not purged yet: few, since records purge them.
    fn expired_count(&self, now_ms: u64) -> usize {
        self.expiries
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .count()
    }

    /// Rebuilds a store from [`StateMachine::snapshot`]'s bytes.
    pub fn from_snapshot(mut bytes: &[u8]) -> Result<Store, BoxError> {
        fn need(bytes: &[u8], len: usize) -> Result<(), BoxError> {
            if bytes.len() < len {
                return Err("snapshot ends early".into());
            }
            Ok(())
        }
        need(bytes, SNAPSHOT_MAGIC.len() + 2 + 8 + 8)?;
        if &bytes[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
            return Err("not a key-value snapshot (bad magic)".into());
        }
        bytes.advance(SNAPSHOT_MAGIC.len());
        let version = bytes.get_u16_le();
        if version != SNAPSHOT_VERSION {
            return Err(format!(
                "snapshot format version {version} is not supported (reads {SNAPSHOT_VERSION})"
            )
            .into());
        }
        let mut store = Store {
            clock_ms: bytes.get_u64_le(),
            ..Store::default()
        };
        let count = bytes.get_u64_le();
        let mut previous: Option<Bytes> = None;
        for _ in 0..count {
            let mut blob = || -> Result<Bytes, BoxError> {
                need(bytes, 4)?;
                let len = bytes.get_u32_le() as usize;
                need(bytes, len)?;
                Ok(bytes.copy_to_bytes(len))
            };
            let key = blob()?;
            let value = blob()?;
            need(bytes, 1)?;
            let expire_at_ms = match bytes.get_u8() {
                0 => None,
                1 => {
                    need(bytes, 8)?;
                    Some(bytes.get_u64_le())
                }
                other => return Err(format!("bad expiry marker {other} in snapshot").into()),
            };
            // Written in key order, so each key is above the one before: no duplicates.
            if previous.as_ref().is_some_and(|previous| *previous >= key) {
                return Err("snapshot keys are not in order".into());
            }
            previous = Some(key.clone());
            store.insert(key, value, expire_at_ms);
        }
        if !bytes.is_empty() {
            return Err(format!("{} bytes after the last snapshot entry", bytes.len()).into());
        }
        Ok(store)
    }

    /// Asserts that the expiry index matches the entries (O(n): tests).
    #[cfg(test)]
    fn validate(&self) {
        let expected: BTreeSet<(u64, Bytes)> = self
            .entries
            .iter()
            .filter_map(|(key, entry)| {
                entry
                    .expire_at_ms
                    .map(|at| (at, Bytes::copy_from_slice(key.as_bytes())))
            })
            .collect();
        assert_eq!(self.expiries, expected);
    }
}

/// A value as a 64-bit integer, as Redis reads one: optional `-`, decimal digits, no
/// leading zeros, spaces or `+`.
pub fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [] => false,
        [b'0'] => bytes.len() == 1,
        [first, rest @ ..] => {
            (b'1'..=b'9').contains(first) && rest.iter().all(|b| b.is_ascii_digit())
        }
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(text: &str) -> Bytes {
        Bytes::from(text.to_owned())
    }

    fn set(key: &str, value: &str, condition: Condition, expiry: Expiry) -> Op {
        Op::Set {
            key: b(key),
            value: b(value),
            condition,
            expiry,
            get: false,
        }
    }

    /// Applies one batch through the encoded form, as the driver does.
    fn apply(store: &mut Store, now_ms: u64, ops: Vec<Op>) -> Vec<Reply> {
        let replies = store.apply(Lsn(1), &Batch { now_ms, ops }.encode());
        store.validate();
        replies
    }

    /// SET NX sets only a missing key, XX only a present one; the other answers nil.
    #[test]
    fn set_nx_and_xx_follow_presence() {
        let mut store = Store::default();
        let replies = apply(
            &mut store,
            0,
            vec![
                set("k", "1", Condition::IfPresent, Expiry::Never),
                set("k", "2", Condition::IfAbsent, Expiry::Never),
                set("k", "3", Condition::IfAbsent, Expiry::Never),
                set("k", "4", Condition::IfPresent, Expiry::Never),
            ],
        );
        assert_eq!(
            replies,
            vec![Reply::Nil, Reply::ok(), Reply::Nil, Reply::ok()]
        );
        assert_eq!(store.get(b"k", 0), Some(&b("4")));
    }

    /// SET ... GET answers the old value, also when NX refuses to set.
    #[test]
    fn set_get_answers_the_old_value() {
        let mut store = Store::default();
        let mut op = set("k", "1", Condition::Always, Expiry::Never);
        if let Op::Set { get, .. } = &mut op {
            *get = true;
        }
        let mut nx_get = set("k", "2", Condition::IfAbsent, Expiry::Never);
        if let Op::Set { get, .. } = &mut nx_get {
            *get = true;
        }
        let replies = apply(&mut store, 0, vec![op.clone(), op, nx_get]);
        assert_eq!(
            replies,
            vec![Reply::Nil, Reply::Bulk(b("1")), Reply::Bulk(b("1"))]
        );
    }

    /// An expiring key is gone for readers once its time passes, and a later record's
    /// clock purges it; SET NX then sees it absent.
    #[test]
    fn expired_keys_vanish_for_readers_and_are_purged_by_records() {
        let mut store = Store::default();
        apply(
            &mut store,
            1_000,
            vec![set("k", "v", Condition::Always, Expiry::At(1_100))],
        );
        assert_eq!(store.get(b"k", 1_099), Some(&b("v")));
        assert_eq!(store.get(b"k", 1_100), None);
        assert_eq!(store.live_count(1_100), 0);
        assert_eq!(store.entries.len(), 1, "not purged without a record");
        apply(&mut store, 1_100, vec![]);
        assert!(store.entries.is_empty(), "the empty record purged it");
        apply(
            &mut store,
            2_000,
            vec![set("k", "v", Condition::Always, Expiry::At(2_100))],
        );
        let replies = apply(
            &mut store,
            2_200,
            vec![set("k", "new", Condition::IfAbsent, Expiry::Never)],
        );
        assert_eq!(replies, vec![Reply::ok()]);
        assert_eq!(store.live(b"k", 9_999).map(|e| e.expire_at_ms), Some(None));
    }

    /// A proposer whose clock is behind does not bring an expired key back.
    #[test]
    fn store_clock_never_goes_back() {
        let mut store = Store::default();
        apply(
            &mut store,
            1_000,
            vec![set("k", "v", Condition::Always, Expiry::At(1_500))],
        );
        apply(&mut store, 2_000, vec![]);
        apply(&mut store, 1_200, vec![]);
        assert_eq!(store.clock_ms(), 2_000);
        assert_eq!(store.get(b"k", 1_200), None);
    }

    /// KEEPTTL and INCR keep the expiry; a plain SET and MSET drop it.
    #[test]
    fn keepttl_and_incr_keep_the_expiry() {
        let mut store = Store::default();
        apply(
            &mut store,
            0,
            vec![
                set("k", "1", Condition::Always, Expiry::At(500)),
                set("k", "2", Condition::Always, Expiry::Keep),
                Op::IncrBy {
                    key: b("k"),
                    delta: 5,
                },
            ],
        );
        assert_eq!(
            store.live(b"k", 0),
            Some(&Entry {
                value: b("7"),
                expire_at_ms: Some(500)
            })
        );
        apply(
            &mut store,
            0,
            vec![set("k", "x", Condition::Always, Expiry::Never)],
        );
        assert_eq!(store.live(b"k", 0).and_then(|e| e.expire_at_ms), None);
        assert!(store.expiries.is_empty());
    }

    /// INCR on a value that is not an integer answers an error and changes nothing; so
    /// does an overflow.
    #[test]
    fn incr_on_a_non_integer_is_an_error_and_changes_nothing() {
        let mut store = Store::default();
        apply(
            &mut store,
            0,
            vec![
                set("s", "abc", Condition::Always, Expiry::Never),
                set("z", " 1", Condition::Always, Expiry::Never),
                set(
                    "max",
                    &i64::MAX.to_string(),
                    Condition::Always,
                    Expiry::Never,
                ),
            ],
        );
        let before = store.snapshot();
        let replies = apply(
            &mut store,
            0,
            vec![
                Op::IncrBy {
                    key: b("s"),
                    delta: 1,
                },
                Op::IncrBy {
                    key: b("z"),
                    delta: 1,
                },
                Op::IncrBy {
                    key: b("max"),
                    delta: 1,
                },
            ],
        );
        assert_eq!(
            replies,
            vec![
                Reply::error("ERR value is not an integer or out of range"),
                Reply::error("ERR value is not an integer or out of range"),
                Reply::error("ERR increment or decrement would overflow"),
            ]
        );
        assert_eq!(store.snapshot(), before);
        let replies = apply(
            &mut store,
            0,
            vec![Op::IncrBy {
                key: b("new"),
                delta: -3,
            }],
        );
        assert_eq!(replies, vec![Reply::Integer(-3)]);
    }

    /// Keys longer than the inline limit live on the heap and behave the same: set, read,
    /// overwritten, snapshot and restored, deleted; next to an inline key of the same prefix.
    #[test]
    fn long_and_short_keys_alike() {
        let long = "k".repeat(KEY_INLINE_MAX + 1);
        let exact = "k".repeat(KEY_INLINE_MAX);
        let mut store = Store::default();
        let always = |key: &str, value: &str| set(key, value, Condition::Always, Expiry::Never);
        apply(
            &mut store,
            0,
            vec![always(&long, "1"), always(&exact, "2"), always(&long, "3")],
        );
        assert_eq!(store.get(long.as_bytes(), 0), Some(&b("3")));
        assert_eq!(store.get(exact.as_bytes(), 0), Some(&b("2")));
        assert_eq!(store.live_count(0), 2);
        let restored = Store::from_snapshot(&store.snapshot()).unwrap();
        assert_eq!(restored, store);
        let replies = apply(
            &mut store,
            0,
            vec![Op::Del {
                keys: vec![b(&long)],
            }],
        );
        assert_eq!(replies, vec![Reply::Integer(1)]);
        assert_eq!(store.get(long.as_bytes(), 0), None);
        assert_eq!(store.get(exact.as_bytes(), 0), Some(&b("2")));
    }

    /// A capture is the state when it was taken: writes, deletes, expiries and a FLUSHALL
    /// applied before its job runs change nothing in its bytes, which are the snapshot's of
    /// that moment and restore to that state.
    #[test]
    fn a_capture_is_the_state_it_was_taken_at() {
        let mut store = Store::default();
        let always = |key: &str, value: &str| set(key, value, Condition::Always, Expiry::Never);
        let mut ops: Vec<Op> = (0..3_000)
            .map(|i| always(&format!("key{i}"), &format!("v{i}")))
            .collect();
        ops.push(set("ttl", "x", Condition::Always, Expiry::At(500)));
        apply(&mut store, 0, ops);
        let before = store.snapshot();
        let as_it_was = Store::from_snapshot(&before).unwrap();
        let job = store.capture();
        let ops: Vec<Op> = (0..1_500)
            .map(|i| always(&format!("key{i}"), "changed"))
            .chain((1_500..2_000).map(|i| Op::Del {
                keys: vec![b(&format!("key{i}"))],
            }))
            .chain((0..500).map(|i| always(&format!("new{i}"), "new")))
            .collect();
        apply(&mut store, 1_000, ops);
        assert_eq!(store.get(b"ttl", 1_000), None);
        let after = store.snapshot();
        apply(&mut store, 1_000, vec![Op::FlushAll]);
        let bytes = job();
        assert!(
            bytes == before,
            "the capture's bytes are the snapshot's when it was taken"
        );
        assert_eq!(Store::from_snapshot(&bytes).unwrap(), as_it_was);
        assert_ne!(after, before);
        assert_eq!(store.live_count(1_000), 0);
    }

    /// DEL counts only live keys, each once.
    #[test]
    fn del_counts_live_keys_once() {
        let mut store = Store::default();
        apply(
            &mut store,
            0,
            vec![
                set("a", "1", Condition::Always, Expiry::Never),
                set("e", "1", Condition::Always, Expiry::At(10)),
            ],
        );
        let replies = apply(
            &mut store,
            10,
            vec![Op::Del {
                keys: vec![b("a"), b("a"), b("e"), b("missing")],
            }],
        );
        assert_eq!(replies, vec![Reply::Integer(1)]);
        assert!(store.entries.is_empty());
    }

    /// A record that is not a command answers one error and changes nothing.
    #[test]
    fn garbage_record_changes_nothing() {
        let mut store = Store::default();
        assert_eq!(
            store.apply(Lsn(1), b"garbage"),
            vec![Reply::error(NOT_A_COMMAND)]
        );
        assert_eq!(store, Store::default());
    }

    /// Values are read back as integers only in Redis's canonical form.
    #[test]
    fn integers_parse_only_in_canonical_form() {
        for good in [
            "0",
            "-1",
            "42",
            "9223372036854775807",
            "-9223372036854775808",
        ] {
            assert!(parse_integer(good.as_bytes()).is_some(), "{good}");
        }
        for bad in [
            "",
            "-",
            "-0",
            "01",
            "+1",
            " 1",
            "1 ",
            "9223372036854775808",
            "1.0",
        ] {
            assert_eq!(parse_integer(bad.as_bytes()), None, "{bad}");
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(b);
        let value = prop::sample::select(vec!["1", "-7", "x", ""]).prop_map(b);
        let condition = prop_oneof![
            Just(Condition::Always),
            Just(Condition::IfAbsent),
            Just(Condition::IfPresent)
        ];
        let expiry = prop_oneof![
            Just(Expiry::Never),
            Just(Expiry::Keep),
            (0u64..100).prop_map(Expiry::At)
        ];
        prop_oneof![
            (key.clone(), value.clone(), condition, expiry, any::<bool>()).prop_map(
                |(key, value, condition, expiry, get)| Op::Set {
                    key,
                    value,
                    condition,
                    expiry,
                    get
                }
            ),
            prop::collection::vec(key.clone(), 0..3).prop_map(|keys| Op::Del { keys }),
            (key.clone(), -3i64..3).prop_map(|(key, delta)| Op::IncrBy { key, delta }),
            prop::collection::vec((key, value), 0..3).prop_map(|pairs| Op::MSet { pairs }),
            Just(Op::FlushAll),
        ]
    }

    proptest! {
        /// Two stores applying the same records end equal, with equal replies; a store
        /// restored from a snapshot taken midway ends equal too.
        #[test]
        fn apply_is_deterministic_and_snapshots_restore_exactly(
            batches in prop::collection::vec(
                (0u64..120, prop::collection::vec(op(), 0..4)), 0..12),
            midway in any::<prop::sample::Index>(),
        ) {
            let records: Vec<Vec<u8>> = batches
                .into_iter()
                .map(|(now_ms, ops)| Batch { now_ms, ops }.encode())
                .collect();
            let midway = midway.index(records.len() + 1);
            let (mut one, mut two) = (Store::default(), Store::default());
            let mut restored = None;
            for (i, record) in records.iter().enumerate() {
                if i == midway {
                    let mut fresh = Store::default();
                    fresh.restore(Lsn(i as u64), &one.snapshot()).unwrap();
                    restored = Some(fresh);
                }
                let replies = one.apply(Lsn(1), record);
                prop_assert_eq!(&replies, &two.apply(Lsn(1), record));
                if let Some(restored) = &mut restored {
                    prop_assert_eq!(&replies, &restored.apply(Lsn(1), record));
                }
                one.validate();
            }
            prop_assert_eq!(&one, &two);
            // The same state, reached by another history, is the same snapshot bytes (the
            // hash map's order differs; the snapshot sorts its keys).
            prop_assert_eq!(one.snapshot(), two.snapshot());
            if let Some(restored) = restored {
                restored.validate();
                prop_assert_eq!(&one, &restored);
                prop_assert_eq!(one.snapshot(), restored.snapshot());
            }
        }

        /// Arbitrary snapshot bytes are refused or restored, never a panic.
        #[test]
        fn arbitrary_snapshot_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Store::from_snapshot(&bytes);
        }
    }

    /// Not a check: prints what `apply` costs per SET (16-SET records of 128-byte values
    /// over 300,000 keys), what a capture holds the application for, and what the first
    /// 32,000 SETs after it cost. `cargo test --release --example kv -- --ignored
    /// --nocapture timing_apply_and_capture` (`benches/README.md`, "The snapshot's pause").
    #[test]
    #[ignore]
    fn timing_apply_and_capture() {
        let mut store = Store::default();
        let value = "v".repeat(128);
        let mut n = 0u64;
        let records: Vec<Vec<u8>> = (0..1_000_000 / 16)
            .map(|_| {
                let ops = (0..16)
                    .map(|_| {
                        n = n
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        let key = format!("key:{:012}", (n >> 33) % 300_000);
                        set(&key, &value, Condition::Always, Expiry::Never)
                    })
                    .collect();
                Batch { now_ms: 0, ops }.encode()
            })
            .collect();
        for round in 0..3 {
            let started = std::time::Instant::now();
            for record in &records {
                store.apply(Lsn(1), record);
            }
            let per_set = started.elapsed().as_nanos() / 1_000_000;
            let started = std::time::Instant::now();
            let job = store.capture();
            let capture = started.elapsed();
            let started = std::time::Instant::now();
            for record in &records[..2_000] {
                store.apply(Lsn(1), record);
            }
            let after = started.elapsed();
            drop(job);
            println!(
                "round {round}: apply {per_set} ns per SET; capture {capture:?}; \
                 the 32,000 SETs after it {after:?}"
            );
        }
    }
}
