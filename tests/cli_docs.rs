//! `understudy completions`, `understudy man` and the `UNDERSTUDY_ADMIN` fallback of the
//! operator commands, run as the operator runs them.

use std::process::Command;

fn understudy(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(args)
        .env_remove("UNDERSTUDY_ADMIN")
        .output()
        .expect("run understudy")
}

#[test]
fn completions_for_every_shell_name_the_commands_and_bash_parses_its_script() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = understudy(&["completions", shell]);
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8(out.stdout).expect("UTF-8");
        for word in ["switchover", "status", "follow-dir", "peers"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("understudy.bash");
            std::fs::write(&path, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
            assert!(
                check.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let out = understudy(&["completions", "tcsh"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

#[test]
fn the_manual_is_roff_and_one_page_per_command_can_be_written() {
    let out = understudy(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(page.contains(".TH understudy 1"), "{page}");
    assert!(page.contains("switchover"));

    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    let out = understudy(&["man", "--out-dir", pages.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = std::fs::read_to_string(pages.join("understudy-run.1")).expect("the run page");
    assert!(run.contains(".TH understudy-run 1"));
    for flag in ["peers", "follow", "app\\-cmd"] {
        assert!(run.contains(flag), "understudy-run.1 lacks {flag}");
    }
    assert!(pages.join("understudy.1").exists());
    assert!(pages.join("understudy-status.1").exists());
}

#[test]
fn the_operator_commands_take_the_admin_address_from_the_environment() {
    for command in [&["status"][..], &["switchover"][..], &["pause"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_understudy"))
            .args(command)
            .env("UNDERSTUDY_ADMIN", "127.0.0.1:1")
            .output()
            .expect("run understudy");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("127.0.0.1:1"),
            "{command:?} did not use UNDERSTUDY_ADMIN: {stderr}"
        );
        // Without it, the flag is required.
        let out = understudy(command);
        assert!(String::from_utf8_lossy(&out.stderr).contains("--admin"));
    }
}
