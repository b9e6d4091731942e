//! Rooms: who is in a room, and the fan-out of its messages in seq order.
//!
//! - `handle.rs`: [`RoomHandle`], what sessions and the writer hold; it
//!   outlives the actor behind it and keeps the room's state across a
//!   restart.
//! - `actor.rs`: [`RoomActor`], the one place a room's state changes, so
//!   join, leave, typing and publish are totally ordered.
//! - `supervisor.rs`: spawns rooms on demand, restarts a crashed one,
//!   stops idle ones; [`Rooms`] is how the rest of the engine asks it.
//!
//! Who may use a room is decided here once ([`check_access`]), for the
//! WebSocket and the HTTP API alike.

mod actor;
mod handle;
mod supervisor;

use std::sync::Arc;

use viche_protocol::validate::{parse_room, RoomKind};
use viche_protocol::ErrorCode;

pub(crate) use handle::{InFlight, RoomHandle, RoomOp};
pub(crate) use supervisor::{Rooms, SupervisorArgs};

use crate::refusal::Refusal;

/// A room's kind, owning the two usernames of a DM room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RoomKindOwned {
    Public,
    Dm(Arc<str>, Arc<str>),
}

/// Checks a room id, and that `user` may use that room: anyone may use a
/// public room; a DM room `dm:a:b` only `a` and `b`.
pub(crate) fn check_access<'r>(user: &str, room: &'r str) -> Result<RoomKind<'r>, Refusal> {
    let kind = parse_room(room).ok_or_else(|| Refusal::new(ErrorCode::Invalid, format!("invalid room id {room:?}")))?;
    if let RoomKind::Dm(a, b) = kind {
        if user != a && user != b {
            return Err(Refusal::new(ErrorCode::Forbidden, "a DM room is only for its two users"));
        }
    }
    Ok(kind)
}
