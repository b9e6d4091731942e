//! Metric handles for the hot path, registered once, and the gauges that
//! are sampled when `/metrics` is scraped.
//!
//! `metrics::counter!(name, labels…)` looks its key up in the recorder's
//! registry on every call (a hash and a read lock). That is fine for a
//! login, not for something done per message or per flush: those use the
//! handles here, obtained once. The first call to [`hot`] registers them
//! with whatever recorder is installed at that moment, so the gateway calls
//! it right after installing its recorder; with no recorder (`--no-metrics`,
//! unit tests, benches) every handle is a no-op.
//!
//! Names and meanings: `docs/operations.md`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use metrics::{Counter, Histogram};
use viche_protocol::{ClientFrame, ServerFrame};

/// `type` label values of `viche_frames_in_total`, in [`client_index`]
/// order; `bad_frame` counts frames that did not decode.
pub const CLIENT_FRAME_TYPES: [&str; 10] =
    ["hello", "auth", "join", "leave", "send", "dm", "typing", "history", "ping", "bad_frame"];
const BAD_FRAME: usize = 9;

/// `type` label values of `viche_frames_out_total`, in [`server_index`] order.
pub const SERVER_FRAME_TYPES: [&str; 9] =
    ["welcome", "ok", "ack", "msg", "presence", "typing", "history", "error", "pong"];

fn client_index(frame: &ClientFrame) -> usize {
    match frame {
        ClientFrame::Hello { .. } => 0,
        ClientFrame::Auth { .. } => 1,
        ClientFrame::Join { .. } => 2,
        ClientFrame::Leave { .. } => 3,
        ClientFrame::Send { .. } => 4,
        ClientFrame::Dm { .. } => 5,
        ClientFrame::Typing { .. } => 6,
        ClientFrame::History { .. } => 7,
        ClientFrame::Ping { .. } => 8,
    }
}

fn server_index(frame: &ServerFrame) -> usize {
    match frame {
        ServerFrame::Welcome { .. } => 0,
        ServerFrame::Ok { .. } => 1,
        ServerFrame::Ack { .. } => 2,
        ServerFrame::Msg(_) => 3,
        ServerFrame::Presence { .. } => 4,
        ServerFrame::Typing { .. } => 5,
        ServerFrame::History { .. } => 6,
        ServerFrame::Error { .. } => 7,
        ServerFrame::Pong { .. } => 8,
    }
}

/// Handles used per message, per delivery batch or per socket flush.
pub struct Hot {
    pub deliveries: Counter,
    pub send_deliver_latency: Histogram,
    pub messages_stored: Counter,
    pub frames_in_bytes: Counter,
    pub frames_out_bytes: Counter,
    frames_in: [Counter; CLIENT_FRAME_TYPES.len()],
    frames_out: [Counter; SERVER_FRAME_TYPES.len()],
}

impl Hot {
    fn register() -> Self {
        Self {
            deliveries: metrics::counter!("viche_deliveries_total"),
            send_deliver_latency: metrics::histogram!("viche_send_deliver_latency_seconds"),
            messages_stored: metrics::counter!("viche_messages_stored_total"),
            frames_in_bytes: metrics::counter!("viche_frames_in_bytes_total"),
            frames_out_bytes: metrics::counter!("viche_frames_out_bytes_total"),
            frames_in: CLIENT_FRAME_TYPES.map(|t| metrics::counter!("viche_frames_in_total", "type" => t)),
            frames_out: SERVER_FRAME_TYPES.map(|t| metrics::counter!("viche_frames_out_total", "type" => t)),
        }
    }

    /// One decoded client frame.
    #[inline]
    pub fn frame_in(&self, frame: &ClientFrame) {
        self.frames_in[client_index(frame)].increment(1);
    }

    /// One client frame that did not decode.
    #[inline]
    pub fn bad_frame_in(&self) {
        self.frames_in[BAD_FRAME].increment(1);
    }

    /// `n` copies of `frame` queued for (or written to) clients.
    #[inline]
    pub fn frames_out(&self, frame: &ServerFrame, n: usize) {
        if n > 0 {
            self.frames_out[server_index(frame)].increment(n as u64);
        }
    }

    /// `n` `msg` frames written from the store (a replay).
    #[inline]
    pub fn msgs_out(&self, n: usize) {
        self.frames_out[3].increment(n as u64);
    }
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// The hot-path handles (registered on first use).
#[inline]
pub fn hot() -> &'static Hot {
    HOT.get_or_init(Hot::register)
}

/// The deepest any session's outbox got (in frames) since the last
/// [`take_outbox_depth_max`]. A push reads it and writes only when it
/// exceeds it, so the shared cache line is rarely written.
static OUTBOX_DEPTH_MAX: AtomicUsize = AtomicUsize::new(0);

#[inline]
pub(crate) fn note_outbox_depth(frames: usize) {
    if frames > OUTBOX_DEPTH_MAX.load(Ordering::Relaxed) {
        OUTBOX_DEPTH_MAX.fetch_max(frames, Ordering::Relaxed);
    }
}

/// Returns the largest outbox depth seen since the previous call, and
/// starts a new period.
pub fn take_outbox_depth_max() -> usize {
    OUTBOX_DEPTH_MAX.swap(0, Ordering::Relaxed)
}

/// Sets the gauges that are sampled rather than kept up to date on every
/// change: the writer's queue depth and the largest outbox depth since the
/// previous scrape. Called by `/metrics` right before rendering.
pub fn sample(engine: &crate::Engine) {
    metrics::gauge!("viche_writer_queue_depth").set(engine.writer.queue_depth() as f64);
    metrics::gauge!("viche_writer_pending").set(engine.writer.pending() as f64);
    metrics::gauge!("viche_outbox_depth_max").set(take_outbox_depth_max() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_depth_max_is_a_high_water_mark_per_period() {
        // Other tests in this process push to outboxes too: only check
        // what holds whatever they do.
        note_outbox_depth(1_000_000);
        assert!(take_outbox_depth_max() >= 1_000_000);
        note_outbox_depth(3);
        note_outbox_depth(2);
        let max = take_outbox_depth_max();
        assert!((3..1_000_000).contains(&max), "{max}");
    }

    #[test]
    fn type_tables_match_the_protocol() {
        let frames = [
            ClientFrame::Hello { v: 1, token: String::new() },
            ClientFrame::Ping { req: 1 },
            ClientFrame::Typing { room: "r".into() },
        ];
        for f in &frames {
            assert_eq!(CLIENT_FRAME_TYPES[client_index(f)], f.kind());
        }
        for f in [
            ServerFrame::ok(1),
            ServerFrame::Pong { req: 1 },
            ServerFrame::error(None, viche_protocol::ErrorCode::Invalid, "x"),
        ] {
            assert_eq!(SERVER_FRAME_TYPES[server_index(&f)], f.kind());
        }
    }
}
