//! `understudy run --config FILE` and `--print-config`: every flag from a TOML file, with
//! flags > environment > file > defaults, and one-line errors for a bad file.

use std::process::Command;

fn understudy(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_understudy"));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("UNDERSTUDY_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run understudy")
}

/// The printed value and origin of `key` in `--print-config` output.
fn setting<'a>(printed: &'a str, key: &str) -> Option<(&'a str, &'a str)> {
    printed.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(" = ")?;
        rest.rsplit_once("  # ")
    })
}

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("understudy.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn flags_beat_the_environment_which_beats_the_file_which_beats_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "node-id = 2\npeers = \"1=127.0.0.1:7101,2=127.0.0.1:7102\"\npeer-listen = \"127.0.0.1:7102\"\n\
         data-dir = \"/tmp/d\"\ncluster-secret-file = \"/tmp/s\"\n\
         failover-timeout = \"900ms\"\npriority = 3\nno-failover = true\nheartbeat-interval = \"40ms\"\n\
         tls-ca = \"/tmp/ca.pem\"\n",
    );
    let out = understudy(
        &[
            "run",
            "--config",
            &config,
            "--print-config",
            "--priority",
            "7",
        ],
        &[("UNDERSTUDY_FAILOVER_TIMEOUT", "800ms")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        setting(&printed, "priority"),
        Some(("\"7\"", "flag")),
        "{printed}"
    );
    assert_eq!(
        setting(&printed, "failover-timeout"),
        Some(("\"800ms\"", "environment")),
        "{printed}"
    );
    assert_eq!(
        setting(&printed, "heartbeat-interval"),
        Some(("\"40ms\"", "file")),
        "{printed}"
    );
    assert_eq!(
        setting(&printed, "no-failover"),
        Some(("true", "file")),
        "{printed}"
    );
    assert_eq!(
        setting(&printed, "node-id"),
        Some(("\"2\"", "file")),
        "{printed}"
    );
    // A global flag (a flag of every command) from the file too.
    assert_eq!(
        setting(&printed, "tls-ca"),
        Some(("\"/tmp/ca.pem\"", "file")),
        "{printed}"
    );
    assert_eq!(
        setting(&printed, "log-level"),
        Some(("\"info\"", "default")),
        "{printed}"
    );
    assert_eq!(
        setting(&printed, "snapshot-interval"),
        Some(("\"10m\"", "default")),
        "{printed}"
    );
    // The printed configuration is TOML itself.
    let again = write_config(dir.path(), &printed);
    let out = understudy(&["run", "--config", &again, "--print-config"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        setting(&String::from_utf8(out.stdout).unwrap(), "priority"),
        Some(("\"7\"", "file"))
    );
}

#[test]
fn the_sample_config_is_accepted() {
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/deploy/understudy.toml"
    );
    let out = understudy(&["run", "--config", sample, "--print-config"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        setting(&printed, "peers"),
        Some((
            "\"1=db-1.example:7101,2=db-2.example:7101,3=db-3.example:7101\"",
            "file"
        ))
    );
}

#[test]
fn a_bad_config_file_is_refused_in_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        ("peer-lisen = \"x\"\n", "unknown setting \"peer-lisen\""),
        ("priority = [1, 2]\n", "\"priority\" is a array"),
        ("priority = \n", "understudy.toml"),
        ("[run]\nnode-id = 1\n", "\"run\" is a table"),
    ] {
        let config = write_config(dir.path(), text);
        let out = understudy(&["run", "--config", &config], &[]);
        assert!(!out.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line expected for {text:?}: {stderr}");
        assert!(lines[0].contains("--config"), "{stderr}");
        assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
    }
    let out = understudy(&["run", "--config", "/nonexistent/understudy.toml"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/understudy.toml"));
    // A value the flag refuses gets the flag's own error.
    let config = write_config(
        dir.path(),
        "node-id = 1\npeers = \"1=127.0.0.1:7101\"\npeer-listen = \"127.0.0.1:7101\"\n\
         data-dir = \"/tmp/d\"\ncluster-secret-file = \"/tmp/s\"\nfailover-timeout = \"soon\"\n",
    );
    let out = understudy(&["run", "--config", &config], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("soon"));
}

/// `--print-config` prints what it merged, and says on standard error what `run` would
/// refuse (before, it printed a configuration `run` then stopped on as if it were fine).
#[test]
fn print_config_says_what_run_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "node-id = 1\npeers = \"1=127.0.0.1:7101,2=127.0.0.1:7102\"\npeer-listen = \"127.0.0.1:7101\"\n\
         data-dir = \"/tmp/d\"\ncluster-secret-file = \"/tmp/s\"\nheartbeat-interval = \"1s\"\n",
    );
    let out = understudy(&["run", "--config", &config, "--print-config"], &[]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        setting(&printed, "heartbeat-interval"),
        Some(("\"1s\"", "file")),
        "{printed}"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("run would refuse this configuration here")
            && said.contains("--heartbeat-interval 1s must be at most a third"),
        "{said}"
    );
}
