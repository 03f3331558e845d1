//! Shutdown as a value: tasks wait on a [`Shutdown`], `main` or a test fires the trigger.
//!
//! Passing shutdown in (rather than installing signal handlers deep inside)
//! lets tests stop a service exactly when they want, as mini-redis does.

use tokio::sync::watch;

/// Fires shutdown for every clone of the paired [`Shutdown`].
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A cloneable handle that resolves once shutdown was requested.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl ShutdownTrigger {
    pub fn fire(&self) {
        // Nobody listening any more is fine: there is nothing left to stop.
        let _ = self.0.send(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// A new trigger and its handle.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown is requested (or the trigger is gone).
    pub async fn requested(&mut self) {
        // An error means the trigger was dropped, which also means stop.
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}

/// Resolves on SIGINT or SIGTERM; what a binary's `main` passes as its shutdown.
pub async fn os_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A trigger fired by the first OS signal, for binaries.
pub fn on_os_signal() -> Shutdown {
    let (trigger, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        os_signal().await;
        tracing::info!("shutdown requested by signal");
        trigger.fire();
    });
    shutdown
}
