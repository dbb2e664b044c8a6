//! `--log-format json` and `--log-level`, on a real `understudy run`: every line is one
//! JSON object, fields are values (an address as a string, an id as a number, not Rust
//! debug text like `Some(..)`), and the level filters what is written.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{wait_until, Cluster};

/// Starts node 1 of a one-node cluster with `extra` flags and no RUST_LOG; waits until its
/// log holds `until`, then kills it and returns the log.
fn run_until(extra: &[&str], until: &str) -> String {
    let cluster = Cluster::new(1);
    let log = std::fs::File::create(&cluster.node(1).log).unwrap();
    let mut command = cluster.command(1);
    command
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log);
    let mut child = command.spawn().expect("start understudy");
    let read = || std::fs::read_to_string(&cluster.node(1).log).unwrap_or_default();
    let found = wait_until(Duration::from_secs(10), || read().contains(until));
    let _ = child.kill();
    let _ = child.wait();
    let text = read();
    assert!(found, "no {until:?} in the log:\n{text}");
    text
}

#[test]
fn json_logs_are_one_object_per_line_with_fields_as_values() {
    // The first role change a lone node logs may be to candidate; wait for the promotion.
    let text = run_until(&["--log-format", "json"], r#""role":"primary""#);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    let starting = lines
        .iter()
        .find(|l| l["fields"]["message"] == "understudy starting")
        .expect("the starting line");
    let admin = starting["fields"]["admin"]
        .as_str()
        .expect("admin as a string");
    assert!(admin.starts_with("127.0.0.1:"), "{admin}");
    assert!(
        !text.contains("Some("),
        "Rust debug text in the log:\n{text}"
    );
    let promoted = lines
        .iter()
        .find(|l| l["fields"]["message"] == "role changed" && l["fields"]["role"] == "primary")
        .expect("the promotion line");
    assert_eq!(promoted["fields"]["primary"], 1);
}

#[test]
fn the_log_level_filters_lines() {
    let text = run_until(&["--log-level", "info"], "role changed");
    assert!(text.contains(" INFO "), "{text}");
    // At warn, a node that starts, is elected and serves writes nothing: all of that is
    // info. The admin port answering shows it got that far.
    let cluster = Cluster::new(1);
    let log = std::fs::File::create(&cluster.node(1).log).unwrap();
    let mut command = cluster.command(1);
    command
        .args(["--log-level", "warn"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log);
    let mut child = command.spawn().expect("start understudy");
    let primary = wait_until(Duration::from_secs(10), || {
        support::http_get(cluster.node(1).admin_addr, "/status")
            .is_some_and(|(_, body)| body.contains("\"role\": \"primary\""))
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&cluster.node(1).log).unwrap_or_default();
    assert!(primary, "the node never served as primary:\n{text}");
    assert!(
        !text.contains(" INFO "),
        "info lines at --log-level warn:\n{text}"
    );
}
