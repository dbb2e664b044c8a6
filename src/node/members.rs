//! The shell's side of membership (`core::members` has the rules): what a config record
//! holds, the address of every member as the log says, and the file that keeps the
//! configuration of the log's start once a snapshot has replaced the record.
//!
//! A config record's payload is JSON: `{"voters":[1,2,3],"learners":[4],"addrs":{"1":
//! "10.0.0.1:7101",...}}`, every member's peer address included, so that a node that reads
//! the log knows where every member is. `--peers` seeds the first one (`Action::WriteConfig`
//! after a new cluster's first election) and is otherwise a hint.
//!
//! # The configuration at the log's start (`members.json`)
//! A snapshot replaces the records before it, config records included, so before the log's
//! prefix is cut the configuration in effect at the cut is stored in `members.json` (tmp,
//! fsync, rename, fsync the directory). A crash after the file and before the cut leaves
//! both, which agree; recovery takes the record from the file when the log no longer holds
//! it. A snapshot installed from the primary comes with the configuration in effect at its
//! LSN, stored the same way before the log is reset.
//!
//! # The configuration at a snapshot (`snapshot-members.json`)
//! Start-up can find the newest snapshot beside a log that does not continue it, and must
//! then reset the log after the snapshot (`snapshot::store::recover`), dropping every config
//! record the old log held. Neither the old `members.json` (from an earlier prefix cut) nor
//! `--peers` then says which configuration is in effect at the snapshot. Two ways there:
//! - A snapshot received from the primary becomes durable under its final name before the
//!   core loop stores its configuration in `members.json` and resets the log after it; a
//!   node that stops in between (a crash, or a clean stop that closed the core loop first)
//!   finds the snapshot beside its old log.
//! - A backup's application applies, and snapshots, committed records before they are
//!   durable in the backup's own log. If a write or fsync of the log then fails, the next
//!   start cuts the log back to what was durable before the failure (`disk`), which can be
//!   below the application's snapshot.
//!
//! So every snapshot's configuration, with the LSN and epoch of the snapshot it belongs to,
//! goes to `snapshot-members.json` (tmp, fsync, rename, fsync the directory) *before* the
//! snapshot's final name exists: by the receiver for one from the primary, by the upload for
//! the application's own. Start-up takes it from there (and stores it in `members.json`)
//! before it resets the log. `members.json` itself is not touched before the snapshot is in
//! place: it must keep describing the old log's start for as long as a crash can leave the
//! node on the old log.
//!
//! The file holds the [`SNAPSHOT_MEMBERS_KEPT`] newest entries by snapshot LSN (an upload
//! and a receive can overlap, so one entry would not do); each is only read for the snapshot
//! it names (LSN and epoch both), and none needs removing: the configuration in effect at a
//! committed LSN (a snapshot covers only committed records) never changes, so an entry is
//! right about its snapshot for ever. Only the newest snapshot's entry is ever read, and
//! entries are written in snapshot order but for an overlap, so the newest few suffice.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::PeerAddr;
use crate::core::{MemberRole, Members};
use crate::node::disk::DiskError;
use crate::{Lsn, NodeId};

/// The file in the data dir holding the configuration at the log's start.
pub const MEMBERS_FILE: &str = "members.json";

/// A configuration with every member's address: a config record's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigRecord {
    pub members: Members,
    pub addrs: BTreeMap<NodeId, PeerAddr>,
    /// The members whose address an operator gave (`members add`, `members set-addr`): it
    /// overrides `--peers` everywhere. The others' addresses came from the first primary's
    /// `--peers`, and each node's own `--peers` wins for them (`addrs_for`).
    pub given: std::collections::BTreeSet<NodeId>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    voters: Vec<u16>,
    learners: Vec<u16>,
    addrs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    given: Vec<u16>,
}

/// What is wrong with a config record's payload.
#[derive(Debug, thiserror::Error)]
pub enum ConfigRecordError {
    #[error("config record is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("config record: {0}")]
    Invalid(String),
}

impl ConfigRecord {
    pub fn encode(&self) -> Vec<u8> {
        let ids = |role| {
            self.members
                .ids()
                .filter(|&id| self.members.role(id) == Some(role))
                .map(NodeId::get)
                .collect()
        };
        let wire = Wire {
            voters: ids(MemberRole::Voter),
            learners: ids(MemberRole::Learner),
            addrs: self
                .addrs
                .iter()
                .map(|(id, addr)| (id.get().to_string(), addr.to_string()))
                .collect(),
            given: self.given.iter().map(|id| id.get()).collect(),
        };
        serde_json::to_vec(&wire).unwrap_or_else(|_| unreachable!("plain data serializes"))
    }

    pub fn decode(payload: &[u8]) -> Result<ConfigRecord, ConfigRecordError> {
        let wire: Wire = serde_json::from_slice(payload)?;
        let invalid = |what: String| ConfigRecordError::Invalid(what);
        let mut members = Members::default();
        for (ids, role) in [
            (&wire.voters, MemberRole::Voter),
            (&wire.learners, MemberRole::Learner),
        ] {
            for &id in ids {
                if members.contains(NodeId(id)) {
                    return Err(invalid(format!("node {id} appears twice")));
                }
                members = members
                    .with(NodeId(id), role)
                    .ok_or_else(|| invalid(format!("node id {id} is outside 1..=64")))?;
            }
        }
        if members.voter_count() == 0 {
            return Err(invalid("no voters".into()));
        }
        let mut addrs = BTreeMap::new();
        for (id, addr) in &wire.addrs {
            let id: u16 = id
                .parse()
                .map_err(|_| invalid(format!("bad node id {id:?}")))?;
            let addr = PeerAddr::parse(addr)
                .map_err(|e| invalid(format!("address of node {id} ({addr:?}): {e}")))?;
            addrs.insert(NodeId(id), addr);
        }
        for id in members.ids() {
            if !addrs.contains_key(&id) {
                return Err(invalid(format!("no address for node {id}")));
            }
        }
        addrs.retain(|id, _| members.contains(*id));
        let given = wire
            .given
            .iter()
            .map(|&id| NodeId(id))
            .filter(|&id| members.contains(id))
            .collect();
        Ok(ConfigRecord {
            members,
            addrs,
            given,
        })
    }

    /// `members`, with the addresses of `book` (the ids it lacks are left out of `addrs`).
    pub fn with_addrs(members: Members, book: &BTreeMap<NodeId, PeerAddr>) -> ConfigRecord {
        ConfigRecord {
            members,
            addrs: members
                .ids()
                .filter_map(|id| book.get(&id).map(|addr| (id, addr.clone())))
                .collect(),
            given: Default::default(),
        }
    }
}

/// `members.json`: the configuration at the log's start and the LSN of its record.
///
/// `crc32` is the CRC-32 of the LSN (8 bytes, little-endian) and the record's payload
/// ([`ConfigRecord::encode`]): a byte of the file changed on the disk that still parses
/// (a node id's digit, say, which would hand this node another voter set) is caught as
/// damage. A file without it (written before it existed) is read as it is; unknown fields
/// are refused, so a damaged field name cannot pass for such a file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartFile {
    lsn: u64,
    record: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32: Option<u32>,
}

/// The CRC-32 of `numbers` (each 8 bytes, little-endian) and `record`'s payload.
fn members_crc(numbers: &[u64], record: &ConfigRecord) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for number in numbers {
        hasher.update(&number.to_le_bytes());
    }
    hasher.update(&record.encode());
    hasher.finalize()
}

/// The error for a members file that does not hold what it should: damage, with the remedy.
fn damaged(path: &Path, what: &str) -> String {
    format!(
        "{}: damaged ({what}); refusing to start with a member set that may not be the cluster's (empty the data dir and start it with --initial-cluster-state existing to rejoin from the primary)",
        path.display()
    )
}

/// Checks a members file's `crc32` against what it holds (none: an older file).
fn check_crc(
    path: &Path,
    stored: Option<u32>,
    numbers: &[u64],
    record: &ConfigRecord,
) -> Result<(), String> {
    match stored {
        Some(stored) if stored != members_crc(numbers, record) => {
            Err(damaged(path, "its checksum does not match what it holds"))
        }
        _ => Ok(()),
    }
}

/// Stores the configuration in effect at the log's start (module docs): atomically.
pub fn store_start(dir: &Path, lsn: Lsn, record: &ConfigRecord) -> wal::Result<()> {
    let crc32 = members_crc(&[lsn.get()], record);
    let record: serde_json::Value = serde_json::from_slice(&record.encode())
        .unwrap_or_else(|_| unreachable!("a config record's payload is JSON"));
    let file = StartFile {
        lsn: lsn.get(),
        record,
        crc32: Some(crc32),
    };
    let bytes =
        serde_json::to_vec_pretty(&file).unwrap_or_else(|_| unreachable!("plain data serializes"));
    wal::fs::write_atomic(&dir.join(MEMBERS_FILE), &bytes)
}

/// Reads `members.json`, if there is one.
pub fn load_start(dir: &Path) -> Result<Option<(Lsn, ConfigRecord)>, String> {
    let path = dir.join(MEMBERS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: StartFile =
        serde_json::from_slice(&bytes).map_err(|e| damaged(&path, &e.to_string()))?;
    let record = serde_json::to_vec(&file.record).map_err(|e| e.to_string())?;
    let record = ConfigRecord::decode(&record).map_err(|e| damaged(&path, &e.to_string()))?;
    check_crc(&path, file.crc32, &[file.lsn], &record)?;
    Ok(Some((Lsn(file.lsn), record)))
}

/// The file in the data dir holding the configuration at each of the newest snapshots
/// (module docs).
pub const SNAPSHOT_MEMBERS_FILE: &str = "snapshot-members.json";

/// How many snapshots `snapshot-members.json` keeps the configuration of.
pub const SNAPSHOT_MEMBERS_KEPT: usize = 8;

/// One entry of `snapshot-members.json`: the snapshot a configuration belongs to, the LSN of
/// the configuration's record and the record; `crc32` as in [`StartFile`], over the three
/// numbers in this order and the record.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotEntry {
    snapshot_lsn: u64,
    snapshot_epoch: u64,
    lsn: u64,
    record: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32: Option<u32>,
}

/// `snapshot-members.json` as written: the entries, ascending by snapshot LSN.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotsFile {
    snapshots: Vec<SnapshotEntry>,
}

/// `snapshot-members.json` as read: the list, or the single entry a data dir of an earlier
/// version holds (the snapshot last received from the primary).
#[derive(Deserialize)]
#[serde(untagged)]
enum AnySnapshotsFile {
    Many(SnapshotsFile),
    One(SnapshotEntry),
}

/// Why `snapshot-members.json` could not be read.
enum SnapshotsFileError {
    Io(std::io::Error),
    /// It does not parse (the message says why).
    Damaged(String),
}

/// The entries of `snapshot-members.json` at `path`: none when it does not exist.
fn read_snapshot_entries(path: &Path) -> Result<Vec<SnapshotEntry>, SnapshotsFileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SnapshotsFileError::Io(e)),
    };
    match serde_json::from_slice(&bytes) {
        Ok(AnySnapshotsFile::Many(file)) => Ok(file.snapshots),
        Ok(AnySnapshotsFile::One(entry)) => Ok(vec![entry]),
        Err(e) => Err(SnapshotsFileError::Damaged(e.to_string())),
    }
}

/// Serializes the read-modify-write of `snapshot-members.json` (an upload and a receive
/// can store at once).
static SNAPSHOT_MEMBERS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Stores the configuration in effect at the snapshot `(snapshot_lsn, snapshot_epoch)`:
/// that of the record at `lsn` (module docs). It replaces an entry for the same snapshot
/// LSN, and the oldest entries beyond [`SNAPSHOT_MEMBERS_KEPT`] go. A file found damaged is
/// replaced (what it held could not be read at start-up either).
///
/// # Durability
/// Returns only once the file and its directory entry are fsynced (atomic install), so a
/// caller that installs the snapshot afterwards never leaves a snapshot whose configuration
/// is not on disk.
pub fn store_at_snapshot(
    dir: &Path,
    (snapshot_lsn, snapshot_epoch): (Lsn, Epoch),
    lsn: Lsn,
    record: &ConfigRecord,
) -> Result<(), DiskError> {
    let crc32 = members_crc(
        &[snapshot_lsn.get(), snapshot_epoch.get(), lsn.get()],
        record,
    );
    let record: serde_json::Value = serde_json::from_slice(&record.encode())
        .unwrap_or_else(|_| unreachable!("a config record's payload is JSON"));
    let entry = SnapshotEntry {
        snapshot_lsn: snapshot_lsn.get(),
        snapshot_epoch: snapshot_epoch.get(),
        lsn: lsn.get(),
        record,
        crc32: Some(crc32),
    };
    // A lock an upload can hold over fsyncs: never waited for on the core loop's thread.
    debug_assert!(
        !crate::node::on_runtime_thread(),
        "snapshot-members.json stored on the node's runtime thread"
    );
    let path = dir.join(SNAPSHOT_MEMBERS_FILE);
    let _held = SNAPSHOT_MEMBERS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut entries = match read_snapshot_entries(&path) {
        Ok(entries) => entries,
        Err(SnapshotsFileError::Io(source)) => return Err(DiskError::Io { path, source }),
        Err(SnapshotsFileError::Damaged(reason)) => {
            warn!(path = %path.display(), %reason, "the configurations at the snapshots are damaged; replacing them");
            Vec::new()
        }
    };
    let new = entry.snapshot_lsn;
    entries.retain(|old| old.snapshot_lsn != new);
    entries.push(entry);
    entries.sort_by_key(|entry| entry.snapshot_lsn);
    // Over the limit, the entries of snapshots not on disk go first (an upload stores its
    // entry before its file exists, and one that broke off leaves the entry behind: enough
    // of those must not push out the entry of the snapshot a start will need), oldest
    // first, then the oldest; never the entry being stored.
    let snapshots = dir.join(super::snapshot::store::SNAPSHOTS_DIR);
    let on_disk = |entry: &SnapshotEntry| {
        snapshots
            .join(wal::snapshot::file_name(Lsn(entry.snapshot_lsn)))
            .exists()
    };
    while entries.len() > SNAPSHOT_MEMBERS_KEPT {
        let victim = entries
            .iter()
            .position(|entry| entry.snapshot_lsn != new && !on_disk(entry))
            .or_else(|| entries.iter().position(|entry| entry.snapshot_lsn != new))
            .unwrap_or_else(|| unreachable!("more than one entry, one of them new"));
        entries.remove(victim);
    }
    let bytes = serde_json::to_vec_pretty(&SnapshotsFile { snapshots: entries })
        .unwrap_or_else(|_| unreachable!("plain data serializes"));
    wal::fs::write_atomic(&path, &bytes)?;
    Ok(())
}

/// The configuration [`store_at_snapshot`] stored for the snapshot `(snapshot_lsn,
/// snapshot_epoch)`: `None` when there is no `snapshot-members.json` or no entry for that
/// snapshot. `Err` when the file cannot be read or the entry is not a configuration.
pub fn load_at_snapshot(
    dir: &Path,
    (snapshot_lsn, snapshot_epoch): (Lsn, Epoch),
) -> Result<Option<(Lsn, ConfigRecord)>, String> {
    let path = dir.join(SNAPSHOT_MEMBERS_FILE);
    let entries = match read_snapshot_entries(&path) {
        Ok(entries) => entries,
        Err(SnapshotsFileError::Io(e)) => return Err(format!("{}: {e}", path.display())),
        Err(SnapshotsFileError::Damaged(reason)) => return Err(damaged(&path, &reason)),
    };
    let Some(file) = entries.into_iter().find(|entry| {
        entry.snapshot_lsn == snapshot_lsn.get() && entry.snapshot_epoch == snapshot_epoch.get()
    }) else {
        return Ok(None);
    };
    if file.lsn > file.snapshot_lsn {
        return Err(damaged(
            &path,
            &format!(
                "the configuration's record (lsn {}) is after its snapshot (lsn {})",
                file.lsn, file.snapshot_lsn
            ),
        ));
    }
    let record = serde_json::to_vec(&file.record).map_err(|e| e.to_string())?;
    let record = ConfigRecord::decode(&record).map_err(|e| damaged(&path, &e.to_string()))?;
    check_crc(
        &path,
        file.crc32,
        &[file.snapshot_lsn, file.snapshot_epoch, file.lsn],
        &record,
    )?;
    Ok(Some((Lsn(file.lsn), record)))
}

/// The configurations the shell knows: the one at the log's start and every config record
/// in the log, with addresses; kept in step with the core's (`core::members::Configs`).
#[derive(Clone, Debug, Default)]
pub struct Book {
    pub entries: BTreeMap<Lsn, ConfigRecord>,
}

impl Book {
    pub fn latest(&self) -> Option<(Lsn, &ConfigRecord)> {
        self.entries.iter().next_back().map(|(&lsn, r)| (lsn, r))
    }

    pub fn at(&self, lsn: Lsn) -> Option<(Lsn, &ConfigRecord)> {
        self.entries
            .range(..=lsn)
            .next_back()
            .map(|(&lsn, r)| (lsn, r))
    }

    pub fn truncate_suffix(&mut self, keep_through: Lsn) {
        // The first entry (the log's start) stays whatever happens.
        let first = self.entries.keys().next().copied();
        self.entries
            .retain(|&lsn, _| lsn <= keep_through || Some(lsn) == first);
    }

    /// Every address any configuration gives, the latest winning: where to reach a member.
    pub fn addresses(&self) -> BTreeMap<NodeId, PeerAddr> {
        let mut book = BTreeMap::new();
        for record in self.entries.values() {
            for (&id, addr) in &record.addrs {
                book.insert(id, addr.clone());
            }
        }
        book
    }
}

// The core loop's side.

/// Where every member of `members` (the configuration of the record at `lsn`) but `own` is:
/// as that record says if an operator gave the address (`ConfigRecord::given`); else as this
/// node's `--peers` says, for the ids it names (each node may reach a peer by its own route:
/// another interface, a proxy); else as the record or any configuration of the log says.
pub(super) fn addrs_for(
    book: &Book,
    lsn: Lsn,
    members: Members,
    own: NodeId,
    seed: &BTreeMap<NodeId, PeerAddr>,
) -> BTreeMap<NodeId, PeerAddr> {
    let known = book.addresses();
    let at = book.at(lsn).map(|(_, record)| record);
    let mut addrs = BTreeMap::new();
    for id in members.ids().filter(|&id| id != own) {
        let logged = at.and_then(|record| record.addrs.get(&id));
        let given = at.is_some_and(|record| record.given.contains(&id));
        let addr = if given { logged } else { None }
            .or_else(|| seed.get(&id))
            .or(logged)
            .or_else(|| known.get(&id));
        match addr {
            Some(addr) => {
                addrs.insert(id, addr.clone());
            }
            None => warn!(node = %id, "no address known for a member; not dialling it"),
        }
    }
    addrs
}

use tracing::{info, warn};
use wal::format::{RecordKind, VerifiedRecords};

use super::{MembersReply, NodeError, StepContext};
use crate::Epoch;

impl super::Shell {
    /// `Action::WriteConfig`: the config record, every member's address filled in from the
    /// log's configurations (or the add's request, or `--peers` for the seed).
    pub(super) fn members_write(
        &mut self,
        lsn: Lsn,
        epoch: Epoch,
        members: Members,
        context: &mut StepContext,
    ) -> Result<(), NodeError> {
        let mut book = self.book.addresses();
        for (&id, addr) in &self.config.peers {
            book.entry(id).or_insert_with(|| addr.clone());
        }
        let mut given: std::collections::BTreeSet<NodeId> = self
            .book
            .latest()
            .map(|(_, record)| record.given.clone())
            .unwrap_or_default();
        if let Some((id, addr)) = self.members_adding.take() {
            // The latest record's address for it, not an older one: `addresses()` lets the
            // newest record win, and this one is newer still.
            book.insert(id, addr);
            given.insert(id);
        }
        let mut record = ConfigRecord::with_addrs(members, &book);
        given.retain(|id| members.contains(*id));
        record.given = given;
        assert_eq!(
            record.addrs.len(),
            members.len(),
            "a config record for {members} without every member's address"
        );
        let payload = record.encode();
        let records = VerifiedRecords::encode(
            lsn,
            epoch,
            RecordKind::Config,
            [&payload[..]],
            wal::format::record_len(payload.len()),
        )
        .unwrap_or_else(|| unreachable!("one record was given"));
        self.write(records)?;
        info!(%lsn, %members, "configuration record written");
        self.book.entries.insert(lsn, record);
        if let Some(reply) = context.members_reply.take() {
            if let Some((_, earlier)) = self.members_pending.replace((lsn, reply)) {
                let _ = earlier.send(MembersReply::Unknown);
            }
        }
        Ok(())
    }

    /// `Action::MembersChanged`: dial the members of the new configuration, at the addresses
    /// the log gives, and stop dialling the others (but the departing).
    pub(super) fn members_changed(&mut self, lsn: Lsn, members: Members) {
        let first = self.members_now.1.is_empty();
        self.members_now = (lsn, members);
        self.dial_peers();
        if !first {
            info!(%lsn, %members, "configuration changed");
        }
        if !members.contains(self.config.node_id) {
            warn!(%members, "this node is not a member of the latest configuration it knows (it was removed): it no longer stands for election nor counts for anything; stop it, or add it back with `understudy members add`");
        }
        self.publish_status();
    }

    /// `Action::PeersDeparting`: keep dialling these removed nodes, at the addresses they
    /// were dialled at as members, until the core lets them go.
    pub(super) fn peers_departing(&mut self, ids: u64) {
        // The bit set read as a configuration of learners, for its id iterator.
        let departing = Members::from_bits(0, ids).unwrap_or_default();
        self.departing.retain(|&id, _| departing.contains(id));
        let known = self.book.addresses();
        for id in departing.ids() {
            if self.departing.contains_key(&id) {
                continue;
            }
            match self.net.addr_of(id).or_else(|| known.get(&id).cloned()) {
                Some(addr) => {
                    info!(node = %id, "shipping to a removed node until it holds its removal");
                    self.departing.insert(id, addr);
                }
                None => {
                    warn!(node = %id, "no address known for a removed node; it is not told of its removal")
                }
            }
        }
        self.dial_peers();
    }

    /// Points the transport at the latest configuration's members and the departing nodes.
    /// Any other node that writes to this one (a primary or a candidate that a configuration
    /// replayed while catching up predates) is answered at the address it announced
    /// (`PeerNet::send`).
    fn dial_peers(&mut self) {
        let (lsn, members) = self.members_now;
        let own = self.config.node_id;
        let mut addrs = addrs_for(&self.book, lsn, members, own, &self.config.peers);
        for (&id, addr) in &self.departing {
            addrs.entry(id).or_insert_with(|| addr.clone());
        }
        let ids: Vec<NodeId> = members.ids().collect();
        self.net.set_peers(lsn.get(), &ids, &addrs);
    }

    /// Before the log's prefix is cut through `through`: store the configuration in effect
    /// there, unless `members.json` already holds it (module docs).
    pub(super) fn members_store_start(&mut self, through: Lsn) -> Result<(), NodeError> {
        let Some((lsn, record)) = self.book.at(through) else {
            return Ok(());
        };
        if self.members_stored == Some(lsn) {
            return Ok(());
        }
        let record = record.clone();
        let dir = self.config.data_dir.clone();
        super::blocking(|| store_start(&dir, lsn, &record)).map_err(|e| self.disk_failed(e))?;
        self.members_stored = Some(lsn);
        // Entries before it are not needed any more.
        self.book.entries.retain(|&at, _| at >= lsn);
        Ok(())
    }

    /// The config record an append from the primary carries, checked: only as its last
    /// record, and it must decode. `Err` says why the append is dropped.
    pub(super) fn members_in_append(
        records: &VerifiedRecords,
    ) -> Result<Option<(Lsn, ConfigRecord)>, String> {
        let last = records.last_lsn();
        let mut found = None;
        for record in records.iter() {
            if record.kind != RecordKind::Config {
                continue;
            }
            if record.lsn != last {
                return Err(format!(
                    "config record {} is not the last of its append",
                    record.lsn
                ));
            }
            let decoded = ConfigRecord::decode(record.payload)
                .map_err(|e| format!("config record {}: {e}", record.lsn))?;
            found = Some((record.lsn, decoded));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_record_round_trips_and_bad_ones_are_refused() {
        let members = Members::voters_of(&[NodeId(1), NodeId(2)])
            .and_then(|m| m.with(NodeId(4), MemberRole::Learner))
            .unwrap();
        let mut addrs = BTreeMap::new();
        for (id, a) in [(1, "127.0.0.1:7101"), (2, "db-1.db:7101"), (4, "[::1]:9")] {
            addrs.insert(NodeId(id), PeerAddr::parse(a).unwrap());
        }
        let record = ConfigRecord {
            members,
            addrs,
            given: [NodeId(4)].into_iter().collect(),
        };
        assert_eq!(ConfigRecord::decode(&record.encode()).unwrap(), record);
        for bad in [
            &br#"{"voters":[],"learners":[],"addrs":{}}"#[..],
            br#"{"voters":[1],"learners":[1],"addrs":{"1":"a:1"}}"#,
            br#"{"voters":[65],"learners":[],"addrs":{"65":"a:1"}}"#,
            br#"{"voters":[1],"learners":[],"addrs":{}}"#,
            br#"{"voters":[1],"learners":[],"addrs":{"1":"nope"}}"#,
            b"not json",
        ] {
            assert!(
                ConfigRecord::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_start_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_start(dir.path()).unwrap().is_none());
        let members = Members::voters_of(&[NodeId(3)]).unwrap();
        let mut addrs = BTreeMap::new();
        addrs.insert(NodeId(3), PeerAddr::parse("127.0.0.1:1").unwrap());
        let record = ConfigRecord {
            members,
            addrs,
            given: Default::default(),
        };
        store_start(dir.path(), Lsn(9), &record).unwrap();
        assert_eq!(load_start(dir.path()).unwrap(), Some((Lsn(9), record)));
    }

    /// A byte of a members file changed on the disk is found, even where the file still
    /// parses as a configuration (a voter's id, the LSN); a file written before the
    /// checksum existed is read as it is, and a damaged field name is not taken for one.
    #[test]
    fn a_members_file_changed_on_the_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let members = Members::voters_of(&[NodeId(3), NodeId(4), NodeId(5)]).unwrap();
        let addrs = (3..=5)
            .map(|id| {
                (
                    NodeId(id),
                    PeerAddr::parse(&format!("127.0.0.1:700{id}")).unwrap(),
                )
            })
            .collect();
        let record = ConfigRecord {
            members,
            addrs,
            given: Default::default(),
        };
        let path = dir.path().join(MEMBERS_FILE);
        store_start(dir.path(), Lsn(9), &record).unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        assert!(good.contains("\"crc32\""), "{good}");
        // Node 4's port: the file still parses and decodes, with another address.
        let at = good.find("7004").expect("node 4's address is in the file") + 3;
        let mut flipped = good.clone().into_bytes();
        flipped[at] = b'6';
        std::fs::write(&path, &flipped).unwrap();
        let error = load_start(dir.path()).unwrap_err();
        assert!(error.contains("damaged"), "{error}");
        assert!(
            error.contains("--initial-cluster-state existing"),
            "{error}"
        );

        // Without the checksum (an older file): read as it is.
        let mut old: serde_json::Value = serde_json::from_str(&good).unwrap();
        old.as_object_mut().unwrap().remove("crc32");
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(
            load_start(dir.path()).unwrap(),
            Some((Lsn(9), record.clone()))
        );
        // Its name damaged: refused, not read as an older file.
        std::fs::write(&path, good.replace("\"crc32\"", "\"crc3r\"")).unwrap();
        assert!(load_start(dir.path()).is_err());

        // The snapshot's file the same way.
        store_at_snapshot(dir.path(), (Lsn(20), Epoch(2)), Lsn(9), &record).unwrap();
        assert_eq!(
            load_at_snapshot(dir.path(), (Lsn(20), Epoch(2))).unwrap(),
            Some((Lsn(9), record))
        );
        let path = dir.path().join(SNAPSHOT_MEMBERS_FILE);
        let good = std::fs::read_to_string(&path).unwrap();
        let at = good.find("\"lsn\": 9").expect("the record's lsn") + 7;
        let mut flipped = good.into_bytes();
        flipped[at] = b'8';
        std::fs::write(&path, &flipped).unwrap();
        let error = load_at_snapshot(dir.path(), (Lsn(20), Epoch(2))).unwrap_err();
        assert!(error.contains("damaged"), "{error}");
    }

    /// `snapshot-members.json` keeps the newest entries by snapshot LSN, one per LSN (the
    /// last stored wins), finds each by LSN and epoch, and reads the single entry of a data
    /// dir of an earlier version. A damaged file is replaced by the next store.
    #[test]
    fn the_configurations_at_the_newest_snapshots_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let record = |ids: &[u16]| {
            let ids: Vec<NodeId> = ids.iter().map(|&id| NodeId(id)).collect();
            let addrs = ids
                .iter()
                .map(|&id| {
                    let addr = format!("127.0.0.1:{}", 7000 + id.get());
                    (id, PeerAddr::parse(&addr).unwrap())
                })
                .collect();
            ConfigRecord {
                members: Members::voters_of(&ids).unwrap(),
                addrs,
                given: Default::default(),
            }
        };
        let (a, b) = (record(&[1, 2, 3]), record(&[1, 2, 4]));
        let at = |lsn: u64, epoch: u64| load_at_snapshot(dir.path(), (Lsn(lsn), Epoch(epoch)));
        assert_eq!(at(10, 1).unwrap(), None, "no file");

        // An upload and a receive overlapping: the older snapshot stored last.
        store_at_snapshot(dir.path(), (Lsn(20), Epoch(2)), Lsn(15), &b).unwrap();
        store_at_snapshot(dir.path(), (Lsn(10), Epoch(1)), Lsn(1), &a).unwrap();
        assert_eq!(at(20, 2).unwrap(), Some((Lsn(15), b.clone())));
        assert_eq!(at(10, 1).unwrap(), Some((Lsn(1), a.clone())));
        assert_eq!(at(20, 1).unwrap(), None, "another epoch");
        // The same LSN again: the last stored wins.
        store_at_snapshot(dir.path(), (Lsn(20), Epoch(3)), Lsn(18), &a).unwrap();
        assert_eq!(at(20, 2).unwrap(), None);
        assert_eq!(at(20, 3).unwrap(), Some((Lsn(18), a.clone())));

        // The newest SNAPSHOT_MEMBERS_KEPT stay.
        for lsn in 100..100 + SNAPSHOT_MEMBERS_KEPT as u64 {
            store_at_snapshot(dir.path(), (Lsn(lsn), Epoch(3)), Lsn(18), &a).unwrap();
        }
        assert_eq!(at(20, 3).unwrap(), None, "pushed out by newer ones");
        assert_eq!(at(100, 3).unwrap(), Some((Lsn(18), a.clone())));
        let newest = 99 + SNAPSHOT_MEMBERS_KEPT as u64;
        assert_eq!(at(newest, 3).unwrap(), Some((Lsn(18), a.clone())));

        // An earlier version's file: one entry, not in a list.
        let path = dir.path().join(SNAPSHOT_MEMBERS_FILE);
        let file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let one = file["snapshots"][0].clone();
        assert_eq!(one["snapshot_lsn"], 100);
        std::fs::write(&path, serde_json::to_vec(&one).unwrap()).unwrap();
        assert_eq!(at(100, 3).unwrap(), Some((Lsn(18), a.clone())));
        assert_eq!(at(101, 3).unwrap(), None);

        // Damaged: refused at start-up, replaced by the next store.
        std::fs::write(&path, b"{\"snapshots\": [").unwrap();
        let error = at(100, 3).unwrap_err();
        assert!(error.contains("damaged"), "{error}");
        store_at_snapshot(dir.path(), (Lsn(200), Epoch(4)), Lsn(150), &b).unwrap();
        assert_eq!(at(200, 4).unwrap(), Some((Lsn(150), b)));
        assert_eq!(at(100, 3).unwrap(), None);
    }
}
