//! Delivery: how frames reach a session.
//!
//! Rooms and the writer never talk to a connection. They push encoded
//! frames into a session's bounded [`Outbox`] through its
//! [`SessionHandle`]; the connection's write loop drains it. The
//! [`Directory`] finds every live session of a user (for DMs).

mod directory;
mod encoded;
mod outbox;
mod session_handle;

pub use directory::{Directory, Refused, UserShare};
pub use encoded::EncodedFrame;
pub use outbox::{Direct, DirectWrite, OutItem, Outbox, PushError, DIRECT_WRITES_PER_FANOUT_MAX};
pub use session_handle::{SessionHandle, SessionId};
