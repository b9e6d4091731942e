//! The default limits of docs/protocol.md, "Limits", and the fixed bounds
//! of its HTTP API, transport and frames.
//!
//! Every limit the server enforces has a name here, with its unit in the
//! name. The server's configuration may override the "default" ones; the
//! others are part of the contract and fixed.

pub const FRAME_BYTES_MAX_DEFAULT: usize = 64 * 1024;
pub const BODY_BYTES_MAX_DEFAULT: usize = 4096;
pub const HEARTBEAT_MS_DEFAULT: u64 = 30_000;
pub const HELLO_TIMEOUT_MS: u64 = 10_000;

pub const USERNAME_CHARS_MIN: usize = 3;
pub const USERNAME_CHARS_MAX: usize = 32;
pub const PASSWORD_BYTES_MIN: usize = 8;
pub const PASSWORD_BYTES_MAX: usize = 1024;
pub const ROOM_CHARS_MIN: usize = 1;
pub const ROOM_CHARS_MAX: usize = 64;
pub const CID_BYTES_MIN: usize = 1;
pub const CID_BYTES_MAX: usize = 64;
pub const BODY_BYTES_MIN: usize = 1;

pub const HISTORY_LIMIT_MIN: u64 = 1;
pub const HISTORY_LIMIT_MAX: u64 = 100;
pub const HISTORY_LIMIT_DEFAULT: u64 = 50;
/// v1.1: `conversations` page sizes.
pub const CONVERSATIONS_LIMIT_MIN: u64 = 1;
pub const CONVERSATIONS_LIMIT_MAX: u64 = 200;
pub const CONVERSATIONS_LIMIT_DEFAULT: u64 = 100;
/// v1.1: public rooms among one user's conversations (DMs are not counted).
pub const USER_PUBLIC_CONVERSATIONS_MAX: usize = 1024;
/// v1.1: a reaction's emoji, in bytes of UTF-8.
pub const EMOJI_BYTES_MIN: usize = 1;
pub const EMOJI_BYTES_MAX: usize = 32;
/// Users listed in a join's `ok.members`, and in one `members` page.
pub const MEMBERS_PAGE_MAX: usize = 1000;
/// A `join` with `since` replays at most this many of the newest missed messages.
pub const REPLAY_MESSAGES_MAX: u64 = 1000;

/// Token bucket: `per_second` refill, `burst` capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

pub const SEND_RATE_DEFAULT: Rate = Rate { per_second: 20.0, burst: 50 };
pub const TYPING_RATE_DEFAULT: Rate = Rate { per_second: 2.0, burst: 5 };
pub const JOIN_RATE_DEFAULT: Rate = Rate { per_second: 10.0, burst: 20 };
/// Failed logins, per username and per client address: 10 per minute, bursts of 10.
pub const FAILED_LOGIN_RATE_DEFAULT: Rate = Rate { per_second: 10.0 / 60.0, burst: 10 };
/// Registrations per client address: 60 per minute, bursts of 60.
pub const REGISTER_RATE_DEFAULT: Rate = Rate { per_second: 1.0, burst: 60 };

pub const OUTBOX_FRAMES_MAX_DEFAULT: usize = 1024;
pub const OUTBOX_BYTES_MAX_DEFAULT: usize = 1024 * 1024;

/// More than this many `rate_limited` answers within the window closes with 4029.
pub const RATE_LIMITED_CLOSE_COUNT: u32 = 200;
pub const RATE_LIMITED_WINDOW_MS: u64 = 10_000;
