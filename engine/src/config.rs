//! Every bound the engine enforces, in one struct, with units in the names.
//!
//! Defaults are PROTOCOL.md §7; the gateway maps its flags onto this.

use viche_protocol::limits::{self, Rate};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_frame_bytes: usize,
    pub max_body_bytes: usize,
    pub heartbeat_ms: u64,
    pub hello_timeout_ms: u64,
    pub outbox_max_frames: usize,
    pub outbox_max_bytes: usize,
    pub send_rate: Rate,
    pub typing_rate: Rate,
    pub join_rate: Rate,
    /// Messages waiting for the writer; past it, senders get `overloaded`.
    pub writer_queue_max: usize,
    /// Messages in one store commit.
    pub writer_batch_max: usize,
    /// A room with no members and nothing in flight stops after this long.
    pub room_idle_ms: u64,
    /// Rooms one session may have joined at once.
    pub session_max_rooms: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: limits::DEFAULT_MAX_FRAME_BYTES,
            max_body_bytes: limits::DEFAULT_MAX_BODY_BYTES,
            heartbeat_ms: limits::DEFAULT_HEARTBEAT_MS,
            hello_timeout_ms: limits::HELLO_TIMEOUT_MS,
            outbox_max_frames: limits::DEFAULT_OUTBOX_MAX_FRAMES,
            outbox_max_bytes: limits::DEFAULT_OUTBOX_MAX_BYTES,
            send_rate: limits::DEFAULT_SEND_RATE,
            typing_rate: limits::DEFAULT_TYPING_RATE,
            join_rate: limits::DEFAULT_JOIN_RATE,
            writer_queue_max: 65_536,
            writer_batch_max: 4096,
            room_idle_ms: 30_000,
            session_max_rooms: 1024,
        }
    }
}
