//! The deployment files of `examples/deploy/`, checked as far as this machine allows:
//! the systemd unit by `systemd-analyze verify` (with ExecStart pointed at the binary under
//! test), the container entrypoint's node id from a StatefulSet pod's name, and the
//! Kubernetes manifest by a YAML parser. (No container engine or Kubernetes API server here:
//! the Dockerfile and the manifest are not run.)

use std::path::Path;
use std::process::Command;

fn deploy(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/deploy")
        .join(file)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_systemd_unit_verifies_and_is_a_notify_service_with_a_watchdog() {
    let unit = std::fs::read_to_string(deploy("understudy.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(line), "the unit lacks {line}");
    }
    if !have("systemd-analyze") {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The binary under test in place of /usr/local/bin, and no man page lookup.
    let local = unit
        .replace(
            "/usr/local/bin/understudy",
            env!("CARGO_BIN_EXE_understudy"),
        )
        .lines()
        .filter(|l| !l.starts_with("Documentation="))
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.path().join("understudy.service");
    std::fs::write(&path, local).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("understudy.service"),
        "systemd-analyze has something to say about the unit: {said}"
    );
}

#[test]
fn the_entrypoint_takes_the_node_id_from_the_pods_ordinal() {
    // In place of understudy: a script that prints the environment it was given.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("understudy");
    // Written by a child process: a file this (multi-threaded) test process held open for
    // writing could be inherited by another test's fork, and executing it would then fail
    // with ETXTBSY.
    let made = Command::new("sh")
        .args([
            "-c",
            "printf '#!/bin/sh\\nenv\\n' > \"$1\" && chmod 755 \"$1\"",
            "sh",
        ])
        .arg(&fake)
        .status()
        .unwrap();
    assert!(made.success());
    let run = |hostname: &str, node_id: Option<&str>| {
        let mut command = Command::new("sh");
        command
            .arg(deploy("entrypoint.sh"))
            .env("HOSTNAME", hostname)
            .env("UNDERSTUDY_BIN", &fake)
            .env_remove("UNDERSTUDY_NODE_ID");
        if let Some(id) = node_id {
            command.env("UNDERSTUDY_NODE_ID", id);
        }
        command.output().unwrap()
    };
    let out = run("understudy-2", None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("UNDERSTUDY_NODE_ID=3"));
    let out = run("understudy-0", None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("UNDERSTUDY_NODE_ID=1"));
    // An explicit id wins; a name without an ordinal is refused in one line.
    let out = run("db", Some("7"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("UNDERSTUDY_NODE_ID=7"));
    let out = run("db", None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("UNDERSTUDY_NODE_ID"), "{stderr}");
}

#[test]
fn the_kubernetes_manifest_parses_and_names_peers_by_dns() {
    let text = std::fs::read_to_string(deploy("kubernetes/statefulset.yaml")).unwrap();
    assert!(text.contains("1=understudy-0.understudy:7101"));
    for path in ["/ready", "/health"] {
        assert!(
            text.contains(&format!("path: {path}")),
            "no probe on {path}"
        );
    }
    let parse = Command::new("python3")
        .args([
            "-c",
            "import sys, yaml; docs = list(yaml.safe_load_all(open(sys.argv[1]))); \
             print(' '.join(d['kind'] for d in docs))",
        ])
        .arg(deploy("kubernetes/statefulset.yaml"))
        .output();
    match parse {
        Ok(out) if out.status.success() => {
            let kinds = String::from_utf8_lossy(&out.stdout);
            for kind in [
                "StatefulSet",
                "Service",
                "Role",
                "RoleBinding",
                "ServiceAccount",
            ] {
                assert!(kinds.contains(kind), "no {kind} in {kinds}");
            }
        }
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            eprintln!("skipped the YAML parse: python3 has no yaml module");
        }
        Ok(out) => panic!(
            "the manifest does not parse: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("skipped the YAML parse: no python3"),
    }
}
