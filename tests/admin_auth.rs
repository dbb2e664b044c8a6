//! The admin API's token (`--admin-token-file`) and the permission check on secret files,
//! against real `understudy run` processes and the operator commands.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use support::{http_get, output_within, secret_file, wait_until, Cluster};

const TOKEN: &str = "admin-token-0123456789abcdef";

/// A one-shot POST with an optional `Authorization` header: the status code, the
/// `WWW-Authenticate` header and the body.
fn post(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> (u16, Option<String>, String) {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let header = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{header}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let authenticate = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("www-authenticate: ")
                .or_else(|| l.strip_prefix("WWW-Authenticate: "))
        })
        .map(str::to_string);
    (code, authenticate, body.to_string())
}

fn role(cluster: &Cluster, id: u16) -> Option<String> {
    let (code, body) = http_get(cluster.node(id).admin_addr, "/status")?;
    let view: serde_json::Value = serde_json::from_str(&body).ok()?;
    (code == 200).then(|| view["role"].as_str().map(str::to_string))?
}

fn primary(cluster: &Cluster) -> Option<u16> {
    let found: Vec<u16> = (1..=3)
        .filter(|&id| role(cluster, id).as_deref() == Some("primary"))
        .collect();
    (found.len() == 1).then(|| found[0])
}

fn operator(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(support::binary());
    command
        .args(args)
        .env_remove("UNDERSTUDY_ADMIN_TOKEN")
        .env_remove("UNDERSTUDY_ADMIN_TOKEN_FILE")
        .env_remove("UNDERSTUDY_ADMIN");
    for (key, value) in env {
        command.env(key, value);
    }
    output_within(command, Duration::from_secs(30))
}

#[test]
fn state_changing_requests_need_the_token_and_reads_do_not() {
    let mut cluster = Cluster::new(3);
    let token = secret_file(cluster.dir.path(), "token", &format!("{TOKEN}\n"));
    cluster.args.push("--admin-token-file".into());
    cluster.args.push(token.display().to_string());
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let mut first = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            first = primary(&cluster);
            first.is_some()
        }),
        "no primary:\n{}",
        cluster.logs_tail(30)
    );
    let first = first.unwrap();
    let admin = cluster.node(first).admin_addr;

    // Reads stay open.
    for path in ["/status", "/primary", "/health", "/ready", "/metrics"] {
        let (code, _) = http_get(admin, path).expect("the admin port answers");
        assert_eq!(code, 200, "{path}");
    }
    // Changes need the token: none, a wrong one, the right one in the wrong scheme.
    for authorization in [
        None,
        Some("Bearer not-the-token-0123456789"),
        Some(&format!("Basic {TOKEN}")[..]),
    ] {
        for path in ["/switchover", "/pause", "/resume"] {
            let (code, authenticate, body) = post(admin, path, authorization);
            assert_eq!(code, 401, "{path} with {authorization:?}: {body}");
            assert_eq!(authenticate.as_deref(), Some("Bearer"));
            assert!(body.contains("token"), "{body}");
        }
    }
    assert_eq!(role(&cluster, first).as_deref(), Some("primary"));

    // The operator commands: refused without the token, in one line...
    let admin_text = admin.to_string();
    let out = operator(&["switchover", "--admin", &admin_text], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin token") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
    // ... and obeyed with it, from the environment or from a file.
    let out = operator(
        &["switchover", "--admin", &admin_text],
        &[("UNDERSTUDY_ADMIN_TOKEN", TOKEN)],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(10), || primary(&cluster)
            .is_some_and(|p| p != first)),
        "the switchover with the token did not move the primary:\n{}",
        cluster.logs_tail(30)
    );
    let token_text = token.display().to_string();
    for verb in ["pause", "resume"] {
        let out = operator(
            &[
                verb,
                "--admin",
                &admin_text,
                "--admin-token-file",
                &token_text,
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs `understudy run` with `flag` pointing at a file that its group can read.
fn refused_when_group_readable(flag: &str) {
    let mut cluster = Cluster::new(1);
    let file = secret_file(
        cluster.dir.path(),
        "leaky",
        "a-secret-of-thirty-two-bytes-123\n",
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    if flag == "--cluster-secret-file" {
        cluster.node_mut(1).secret = Some(file.clone());
    } else {
        cluster.args.push(flag.into());
        cluster.args.push(file.display().to_string());
    }
    let out = output_within(cluster.command(1), Duration::from_secs(10));
    assert!(
        !out.status.success(),
        "{flag}: started with a group-readable file"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].contains(flag), "{stderr}");
    assert!(lines[0].contains("0640"), "{stderr}");
    assert!(lines[0].contains("chmod 600"), "{stderr}");
}

#[test]
fn a_group_readable_secret_or_token_file_is_refused_in_one_line() {
    refused_when_group_readable("--cluster-secret-file");
    refused_when_group_readable("--admin-token-file");
}
