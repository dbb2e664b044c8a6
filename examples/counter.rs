//! The smallest complete application: a replicated counter.
//!
//! ```text
//! cargo run --example counter -- --app-socket /var/lib/understudy/app.sock [N ...]
//! ```
//!
//! It connects to its sidecar, catches up with the committed log, proposes `incr N` for each
//! N given (1 2 3 by default), and prints the counter and this node's role. On a backup the
//! proposals are refused with the primary's id and address.

use std::process::ExitCode;

use understudy::client::{BoxError, Driver, ProposeError, StateMachine};
use understudy::Lsn;

#[derive(Default)]
struct Counter(i64);

impl StateMachine for Counter {
    /// The counter after the command.
    type Output = i64;

    fn apply(&mut self, _lsn: Lsn, command: &[u8]) -> i64 {
        // Deterministic on every node: a command that does not parse changes nothing.
        let command = std::str::from_utf8(command).unwrap_or("");
        let step = command.strip_prefix("incr ").and_then(|n| n.parse().ok());
        self.0 = self.0.wrapping_add(step.unwrap_or(0));
        self.0
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    fn restore(&mut self, _lsn: Lsn, snapshot: &[u8]) -> Result<(), BoxError> {
        self.0 = i64::from_le_bytes(snapshot.try_into()?);
        Ok(())
    }
}

const USAGE: &str = "usage: counter --app-socket PATH [N ...]";

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut socket, mut steps) = (None, Vec::new());
    while let Some(arg) = args.next() {
        if arg == "--app-socket" {
            socket = args.next();
        } else if let Ok(step) = arg.parse::<i64>() {
            steps.push(step);
        } else {
            eprintln!("counter: {arg:?} is not a number\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let Some(socket) = socket else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if steps.is_empty() {
        steps = vec![1, 2, 3];
    }
    match run(&socket, &steps).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain: "cannot connect to ...: No such file or directory".
            let mut line = format!("counter: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                line.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}

async fn run(socket: &str, steps: &[i64]) -> Result<(), BoxError> {
    let driver = Driver::connect(socket, Counter::default()).await?;
    driver.wait_applied(driver.role().commit_lsn).await?;
    for step in steps {
        match driver.propose(format!("incr {step}")).await {
            Ok(value) => println!("incr {step} -> {value}"),
            Err(refused @ ProposeError::NotPrimary { .. }) => {
                println!("{refused}");
                break;
            }
            Err(error) => return Err(error.into()),
        }
    }
    let role = driver.role();
    let value = driver.read(|counter| counter.0);
    println!(
        "counter = {value} at lsn {}; node {} is {:?} in epoch {}",
        driver.applied_lsn(),
        driver.node_id(),
        role.role,
        role.epoch
    );
    Ok(())
}
