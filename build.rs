//! Build script: the commit this binary is built from, for `understudy_build_info` in
//! `/metrics` ("unknown" outside a git checkout).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|text| !text.is_empty())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=UNDERSTUDY_COMMIT={commit}");
    // Rebuild when the commit changes. In a linked worktree `.git` is a file and HEAD, the
    // branch refs and packed-refs live elsewhere: ask git where. A path that does not exist
    // would make cargo rerun this script on every build, so only existing ones are named.
    let mut watched = false;
    for name in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
                watched = true;
            }
        }
    }
    if !watched {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
