//! Stop signals: SIGINT and SIGTERM, and what a command does on them.

use crate::exit::Exit;
use tokio_util::sync::CancellationToken;

/// Resolves at the first SIGINT or SIGTERM.
pub async fn signalled() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A token cancelled at the first SIGINT/SIGTERM, for a pass to stop on; a second one
/// exits at once (130).
pub fn interrupt_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        signalled().await;
        tracing::warn!(
            "stopping: no more claims, in-flight requests finish; signal again to exit at once"
        );
        cancel.cancel();
        signalled().await;
        eprintln!("otp-reconcile: second signal, exiting at once");
        std::process::exit(i32::from(Exit::Interrupted.code()));
    });
    token
}

/// Runs `work` unless SIGINT or SIGTERM comes first: then `None`, and `work` is
/// dropped (with whatever it holds, temporary files included). The handlers are in
/// place before `work` starts.
pub async fn unless_signalled<T>(work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        () = signalled() => None,
        done = work => Some(done),
    }
}

/// While the answer is kept, a file-size limit (RLIMIT_FSIZE) fails a write with EFBIG,
/// to be cleaned up like any failed write, instead of killing the process with SIGXFSZ
/// and leaving a temporary file behind.
#[cfg(unix)]
pub fn catch_file_size_signal() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))
}
