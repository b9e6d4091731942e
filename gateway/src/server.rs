//! The accept loop and graceful shutdown.
//!
//! Running out of file descriptors (EMFILE/ENFILE) must not kill the
//! server or spin the loop: the error is counted, the loop backs off, and
//! the open sessions keep being served. Each process here may open at most
//! 20,000 files.
//!
//! Every accepted connection takes a slot of `--max-http-connections` and
//! one of its address's `--max-connections-per-ip` (`http/slots.rs`; not
//! for a trusted proxy, whose clients are charged per request); without
//! them it is closed at once. A request's headers must arrive within
//! `--http-request-timeout-ms` (its body too: `http/reply.rs`), and a
//! response the client does not read is cut after `--write-timeout-ms`
//! (`http/io.rs`): a client that stalls cannot hold a connection and its
//! task forever.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use viche_engine::metrics::{CONNECTIONS_REFUSED, HTTP_TIMEOUTS};

use crate::http::{route, App, HttpIo};

/// How long to stop accepting after EMFILE before trying again.
const EMFILE_BACKOFF_MS: u64 = 100;
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
                // A trusted proxy's connections are charged per request, to
                // the client it names (`route`).
                let address_slot = if app.trusted_proxies.trusts(addr.ip()) {
                    None
                } else {
                    match app.addresses.try_acquire(addr.ip()) {
                        Some(slot) => Some(slot),
                        None => {
                            CONNECTIONS_REFUSED.counter_with("max_connections_per_ip").increment(1);
                            continue; // dropped: closed at once
                        }
                    }
                };
                let Some(http_slot) = app.http_connections.try_acquire() else {
                    CONNECTIONS_REFUSED.counter_with("max_http_connections").increment(1);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let io = HttpIo::new(stream, app.edge.write_timeout(), http_slot, address_slot);
                let progress = io.progress();
                let app = app.clone();
                tokio::spawn(async move {
                    let request_timeout = app.edge.http_request_timeout();
                    let service = service_fn(move |req| route(app.clone(), addr, req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(request_timeout)
                        .serve_connection(TokioIo::new(io), service)
                        .with_upgrades();
                    if let Err(e) = conn.await {
                        // hyper's own timeout is the header read's; an idle
                        // keep-alive connection ends with it too, uncounted.
                        if e.is_timeout() && progress.request_pending() {
                            HTTP_TIMEOUTS.counter_with("headers").increment(1);
                        }
                    }
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
