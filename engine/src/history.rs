//! Reading a room's stored messages: a history page (newest first) for
//! `history` over the WebSocket or HTTP, and a replay page (oldest first)
//! for `join` with `since` and restarts. The access rule and the bounds
//! are checked here once for both transports. And (v1.1) a page of a
//! user's conversations, for `conversations` and `GET /api/conversations`.

use viche_protocol::limits::{CONVERSATIONS_LIMIT_MAX, CONVERSATIONS_LIMIT_MIN, HISTORY_LIMIT_MAX};
use viche_protocol::validate;
use viche_protocol::{Conversation, ErrorCode, Msg};

use crate::refusal::Refusal;
use crate::room::check_access;
use crate::store::{Store, StoreError};

/// One page of a room's history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<Msg>,
    /// True when older messages remain.
    pub more: bool,
}

/// The page of `room` before `before` (from the newest when `None`), of
/// `limit` messages (the default when `None`), as `user` may see it.
pub(crate) async fn page(
    store: &dyn Store,
    user: &str,
    room: &str,
    before: Option<u64>,
    limit: Option<u64>,
) -> Result<HistoryPage, Refusal> {
    check_access(user, room)?;
    let Some(limit) = validate::history_limit(limit) else {
        return Err(Refusal::new(ErrorCode::Invalid, "limit must be 1 to 100"));
    };
    match store.history(room, before, limit as usize).await {
        Ok((messages, more)) => Ok(HistoryPage { messages, more }),
        Err(e) => {
            tracing::warn!(error = %e, room, "history read failed");
            Err(Refusal::internal("history is unavailable right now"))
        }
    }
}

/// Stored messages of `room` with `after < seq <= upto`, oldest first, at
/// most one page ([`HISTORY_LIMIT_MAX`]); the caller asks again from the
/// last seq it got until it reaches `upto`.
pub(crate) async fn replay_page(store: &dyn Store, room: &str, after: u64, upto: u64) -> Result<Vec<Msg>, StoreError> {
    debug_assert!(after < upto);
    store.range(room, after, upto, HISTORY_LIMIT_MAX as usize).await
}

/// One page of a user's conversations, newest activity first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationsPage {
    pub items: Vec<Conversation>,
    /// True when older ones remain (ask again with `before` = the last `last_ts`).
    pub more: bool,
}

/// The page of `user`'s conversations with `last_ts < before` (from the
/// newest when `None`), of `limit` (the default when `None`).
pub(crate) async fn conversations(
    store: &dyn Store,
    user: &str,
    before: Option<u64>,
    limit: Option<u64>,
) -> Result<ConversationsPage, Refusal> {
    let Some(limit) = validate::conversations_limit(limit) else {
        return Err(Refusal::new(
            ErrorCode::Invalid,
            format!("limit must be {CONVERSATIONS_LIMIT_MIN} to {CONVERSATIONS_LIMIT_MAX}"),
        ));
    };
    match store.conversations(user, before, limit as usize).await {
        Ok((items, more)) => Ok(ConversationsPage { items, more }),
        Err(e) => {
            tracing::warn!(error = %e, user, "conversations read failed");
            Err(Refusal::internal("conversations are unavailable right now"))
        }
    }
}
