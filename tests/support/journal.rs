//! Writes under failure, checked: a journal application (every command applied, in
//! order), drivers connected to each node's app socket, writers that follow the primary and
//! record what was acknowledged, and the checks that nothing acknowledged is lost.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use understudy::client::{BoxError, Driver, ProposeError, Role, StateMachine};
use understudy::Lsn;

use super::{wait_until, Cluster};

/// The application: the list of commands applied, in order.
#[derive(Default)]
pub struct Journal {
    pub entries: Vec<(Lsn, Vec<u8>)>,
}

impl StateMachine for Journal {
    type Output = Lsn;
    fn apply(&mut self, lsn: Lsn, command: &[u8]) -> Lsn {
        self.entries.push((lsn, command.to_vec()));
        lsn
    }
    /// Every entry: its LSN (8 bytes), its length (4 bytes), its bytes.
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (lsn, command) in &self.entries {
            out.extend_from_slice(&lsn.get().to_le_bytes());
            out.extend_from_slice(&(command.len() as u32).to_le_bytes());
            out.extend_from_slice(command);
        }
        out
    }
    fn restore(&mut self, _lsn: Lsn, snapshot: &[u8]) -> Result<(), BoxError> {
        let mut entries = Vec::new();
        let mut rest = snapshot;
        while !rest.is_empty() {
            if rest.len() < 12 {
                return Err("a journal snapshot cut inside an entry's header".into());
            }
            let lsn = Lsn(u64::from_le_bytes(rest[..8].try_into()?));
            let len = u32::from_le_bytes(rest[8..12].try_into()?) as usize;
            let command = rest
                .get(12..12 + len)
                .ok_or("a journal snapshot cut inside an entry")?;
            entries.push((lsn, command.to_vec()));
            rest = &rest[12 + len..];
        }
        self.entries = entries;
        Ok(())
    }
}

pub type Drivers = Arc<Mutex<Vec<Option<Arc<Driver<Journal>>>>>>;

pub async fn connect(socket: &Path) -> Arc<Driver<Journal>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Driver::connect(socket, Journal::default()).await {
            Ok(driver) => return Arc::new(driver),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot connect to {}: {e}", socket.display()),
        }
    }
}

pub async fn connect_all(cluster: &Cluster) -> Drivers {
    let ids: Vec<u16> = cluster.nodes.iter().map(|n| n.id).collect();
    connect_some(cluster, &ids).await
}

/// Drivers for the nodes `ids` (the others' slots empty, for nodes started later).
pub async fn connect_some(cluster: &Cluster, ids: &[u16]) -> Drivers {
    let mut drivers = Vec::new();
    for node in &cluster.nodes {
        if ids.contains(&node.id) {
            drivers.push(Some(connect(&node.app_socket).await));
        } else {
            drivers.push(None);
        }
    }
    Arc::new(Mutex::new(drivers))
}

/// Puts a driver for node `id` in its slot (a node started, or restarted).
pub fn set_driver(drivers: &Drivers, id: u16, driver: Option<Arc<Driver<Journal>>>) {
    drivers.lock().unwrap()[usize::from(id) - 1] = driver;
}

pub fn driver(drivers: &Drivers, id: u16) -> Option<Arc<Driver<Journal>>> {
    drivers.lock().unwrap()[usize::from(id) - 1].clone()
}

/// The node whose sidecar says it is primary, if exactly one connected driver says so.
pub fn primary(drivers: &Drivers) -> Option<u16> {
    let drivers = drivers.lock().unwrap();
    let primaries: Vec<u16> = drivers
        .iter()
        .flatten()
        .filter(|d| d.is_connected() && d.role().role == Role::Primary)
        .map(|d| d.node_id().get())
        .collect();
    (primaries.len() == 1).then(|| primaries[0])
}

pub async fn wait_primary(drivers: &Drivers, other_than: Option<u16>) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(p) = primary(drivers) {
            if Some(p) != other_than {
                return p;
            }
        }
        assert!(Instant::now() < deadline, "no primary elected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the writers saw: commands acknowledged, commands with an unknown outcome.
#[derive(Default)]
pub struct Oracle {
    pub acked: Vec<(Lsn, Vec<u8>)>,
    pub unknown: Vec<Vec<u8>>,
}

/// Writes `command-<writer>-<i>` through whichever node is primary until `stop`, following
/// `NotPrimary` hints and retrying only commands that were certainly not written.
pub async fn writer(
    drivers: Drivers,
    writer: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    oracle: Arc<Mutex<Oracle>>,
) {
    let mut i = 0u64;
    let mut target: u16 = 1;
    let nodes = drivers.lock().unwrap().len() as u16;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let command = format!("command-{writer}-{i}").into_bytes();
        let Some(node) = driver(&drivers, target).filter(|d| d.is_connected()) else {
            target = target % nodes + 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        };
        match node.propose(command.clone()).await {
            Ok(lsn) => {
                oracle.lock().unwrap().acked.push((lsn, command));
                i += 1;
            }
            Err(ProposeError::NotPrimary { primary, .. }) => {
                target = primary.map_or(target % nodes + 1, |p| p.get());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(ProposeError::Busy | ProposeError::Disconnected) => {
                target = target % nodes + 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(ProposeError::Unknown) => {
                oracle.lock().unwrap().unknown.push(command);
                i += 1;
            }
            Err(e) => panic!("unexpected proposal error: {e}"),
        }
    }
}

pub type Writers = Vec<tokio::task::JoinHandle<()>>;

/// Starts `count` writers (see [`writer`]) and waits until 200 writes are acknowledged.
pub async fn start_writers(
    drivers: &Drivers,
    count: usize,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    Arc<Mutex<Oracle>>,
    Writers,
) {
    start_writers_until(drivers, count, 200).await
}

/// [`start_writers`], waiting until `acked` writes are acknowledged.
pub async fn start_writers_until(
    drivers: &Drivers,
    count: usize,
    acked: usize,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    Arc<Mutex<Oracle>>,
    Writers,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let oracle = Arc::new(Mutex::new(Oracle::default()));
    let writers = (0..count)
        .map(|w| {
            tokio::spawn(writer(
                Arc::clone(drivers),
                w,
                Arc::clone(&stop),
                Arc::clone(&oracle),
            ))
        })
        .collect();
    assert!(acked_beyond(&oracle, acked - 1, Duration::from_secs(10)));
    (stop, oracle, writers)
}

/// Whether more than `count` writes are acknowledged within `timeout`.
pub fn acked_beyond(oracle: &Mutex<Oracle>, count: usize, timeout: Duration) -> bool {
    wait_until(timeout, || oracle.lock().unwrap().acked.len() > count)
}

/// Checks that every acknowledged command is in `driver`'s state at its LSN.
pub fn assert_all_acked_present(oracle: &Oracle, driver: &Driver<Journal>) {
    driver.read(|journal| {
        let present: std::collections::BTreeMap<Lsn, &[u8]> =
            journal.entries.iter().map(|(l, c)| (*l, &c[..])).collect();
        for (lsn, command) in &oracle.acked {
            assert_eq!(
                present.get(lsn).copied(),
                Some(&command[..]),
                "acknowledged command {} at lsn {lsn} is missing",
                String::from_utf8_lossy(command)
            );
        }
        // No command appears twice.
        let distinct: BTreeSet<&[u8]> = journal.entries.iter().map(|(_, c)| &c[..]).collect();
        assert_eq!(
            distinct.len(),
            journal.entries.len(),
            "a command was applied twice"
        );
    });
}

pub async fn wait_converged(drivers: &Drivers, ids: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let applied: Vec<Lsn> = ids
            .iter()
            .map(|&id| driver(drivers, id).map_or(Lsn::ZERO, |d| d.applied_lsn()))
            .collect();
        let commit = ids
            .iter()
            .filter_map(|&id| driver(drivers, id))
            .map(|d| d.role().commit_lsn)
            .max()
            .unwrap_or(Lsn::ZERO);
        if applied.iter().all(|&a| a == applied[0] && a >= commit) && applied[0] > Lsn::ZERO {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "drivers did not converge: {applied:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops the writers, waits until the drivers of `ids` have applied everything committed,
/// and checks that every acknowledged write is in each of them. Returns how many writes
/// were acknowledged.
pub async fn stop_and_check(
    drivers: &Drivers,
    stop: &std::sync::atomic::AtomicBool,
    oracle: &Mutex<Oracle>,
    writers: Writers,
    ids: &[u16],
) -> usize {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    wait_converged(drivers, ids).await;
    let oracle = oracle.lock().unwrap();
    for &id in ids {
        assert_all_acked_present(&oracle, &driver(drivers, id).expect("a driver"));
    }
    oracle.acked.len()
}
