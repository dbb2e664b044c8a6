//! `--on-promote` and `--on-demote` run with the role, epoch and primary in their
//! environment, for applications that do not listen to the app API.

mod support;

use std::time::Duration;

use support::{wait_until, Cluster};

/// The hook's output file for node `id`.
fn hook_file(cluster: &Cluster, id: u16, kind: &str) -> std::path::PathBuf {
    cluster.dir.path().join(format!("{kind}-{id}.txt"))
}

#[test]
fn promote_and_demote_hooks_run_with_the_role_in_their_environment() {
    let mut cluster = Cluster::new(3);
    for id in 1..=3u16 {
        let promote = hook_file(&cluster, id, "promote");
        let demote = hook_file(&cluster, id, "demote");
        cluster.node_mut(id).extra = vec![
            "--on-promote".into(),
            format!(
                "echo \"$UNDERSTUDY_ROLE $UNDERSTUDY_EPOCH $UNDERSTUDY_PRIMARY\" >> {}",
                promote.display()
            ),
            "--on-demote".into(),
            format!(
                "echo \"$UNDERSTUDY_ROLE $UNDERSTUDY_EPOCH\" >> {}",
                demote.display()
            ),
        ];
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let mut promoted = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            // A whole line: the shell may have created the file and not yet written it.
            promoted = (1..=3u16).find(|&id| {
                std::fs::read_to_string(hook_file(&cluster, id, "promote"))
                    .is_ok_and(|text| text.ends_with('\n'))
            });
            promoted.is_some()
        }),
        "no promote hook ran"
    );
    let primary = promoted.unwrap();
    let text = std::fs::read_to_string(hook_file(&cluster, primary, "promote")).unwrap();
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields[0], "primary", "{text}");
    assert!(fields[1].parse::<u64>().unwrap() >= 1, "{text}");
    assert_eq!(fields[2], primary.to_string(), "{text}");

    // A SIGTERM makes the primary hand over; its demote hook runs as it steps down and may
    // finish after the sidecar has exited.
    let code = cluster.terminate(primary, Duration::from_secs(10));
    assert_eq!(code, Some(0), "SIGTERM did not exit cleanly");
    assert!(
        wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(hook_file(&cluster, primary, "demote"))
                .is_ok_and(|text| text.ends_with('\n'))
        }),
        "no demote hook ran"
    );
    let text = std::fs::read_to_string(hook_file(&cluster, primary, "demote")).unwrap();
    assert!(text.starts_with("backup "), "{text}");
}
