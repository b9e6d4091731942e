//! The accept loop and graceful shutdown.
//!
//! Running out of file descriptors (EMFILE/ENFILE) must not kill the
//! server or spin the loop: the error is counted, the loop backs off, and
//! the open sessions keep being served. Each process here may open at most
//! 20,000 files.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::http::{route, App};

/// How long to stop accepting after EMFILE before trying again.
const EMFILE_BACKOFF_MS: u64 = 100;
/// A request's headers must arrive within this long.
const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Shutdown waits at most this long for in-flight writes.
const SHUTDOWN_WRITES_MAX_MS: u64 = 30_000;
/// And then at most this long for sessions to take their 1001 close.
const SHUTDOWN_SESSIONS_MAX_MS: u64 = 5_000;

/// Why the server stops.
pub enum Stop {
    /// SIGTERM or SIGINT: finish the writes in flight, close with 1001.
    Signal,
    /// The engine gave up (docs/architecture.md, "Supervision"): close
    /// every session with 1011 at once; the process exits non-zero.
    EngineFailed(String),
}

/// Serves until `stop` resolves, then shuts down as it says; returns it.
pub async fn serve(listener: TcpListener, app: Arc<App>, stop: impl std::future::Future<Output = Stop>) -> Stop {
    tokio::pin!(stop);
    let stop = loop {
        let accepted = tokio::select! {
            stop = &mut stop => break stop,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| route(app.clone(), addr, req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS))
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    let _ = conn.await;
                });
            }
            Err(e) => {
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
                if out_of_fds {
                    metrics::counter!("viche_accept_errors_total", "kind" => "emfile").increment(1);
                    tracing::warn!(error = %e, "out of file descriptors; pausing accept");
                    tokio::time::sleep(Duration::from_millis(EMFILE_BACKOFF_MS)).await;
                } else {
                    metrics::counter!("viche_accept_errors_total", "kind" => "other").increment(1);
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    };
    drop(listener);
    match &stop {
        Stop::Signal => {
            tracing::info!("shutting down: finishing writes in flight");
            app.engine.shutdown(Duration::from_millis(SHUTDOWN_WRITES_MAX_MS)).await;
        }
        Stop::EngineFailed(reason) => {
            tracing::error!(reason, "the engine failed: closing every session");
            app.engine.close_sessions(viche_protocol::Close::SERVER_FAILURE);
        }
    }
    app.sessions.close();
    if tokio::time::timeout(Duration::from_millis(SHUTDOWN_SESSIONS_MAX_MS), app.sessions.wait()).await.is_err() {
        tracing::warn!(left = app.sessions.len(), "sessions still open at shutdown deadline");
    }
    tracing::info!("shutdown complete");
    stop
}
