//! An application on a thread and runtime of its own, as a process of its own would be.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use understudy::client::{Driver, StateMachine};

/// An application on a thread and runtime of its own, as a process of its own would be,
/// so that what stops it (a snapshot) stops it alone, and its work is not the caller's
/// runtime's. Connects within 15 s or panics; stopped when dropped.
pub struct AppThread<S: StateMachine> {
    pub driver: Arc<Driver<S>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<S: StateMachine + Default> AppThread<S> {
    pub fn start(socket: PathBuf) -> AppThread<S> {
        let (connected_tx, connected) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let deadline = Instant::now() + Duration::from_secs(15);
                let driver = loop {
                    match Driver::connect(&socket, S::default()).await {
                        Ok(driver) => break Arc::new(driver),
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("cannot connect to {}: {e}", socket.display()),
                    }
                };
                let _ = connected_tx.send(Arc::clone(&driver));
                let _ = stopped.await;
                drop(driver);
            });
        });
        let driver = connected
            .recv_timeout(Duration::from_secs(20))
            .expect("the application connected");
        AppThread {
            driver,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl<S: StateMachine> Drop for AppThread<S> {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
