//! Shutdown: one token every long-running loop selects on, and the OS signals that
//! trigger it.

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown signal.
#[derive(Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown; idempotent.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// Resolves once shutdown has started.
    pub async fn triggered(&self) {
        self.0.cancelled().await;
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
