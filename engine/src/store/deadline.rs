//! Every store call within a deadline (`--store-timeout-ms`): a call with
//! no answer by then fails with [`StoreError::Timeout`], so nothing in the
//! engine (the writer, a room, a login, a history page, `/readyz`) can
//! hang on a store that hangs (MongoDB's `majority` without a `wtimeout`,
//! a disk that stalls). The engine wraps whichever store it was given.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use viche_protocol::{Conversation, Msg};

use super::{
    Added, Appended, BackupReport, Erased, Marker, NewMessage, RoomInfo, Store, StoreError, StoreResult, StoreStats,
    Trim, Trimmed, UserRecord,
};

pub(crate) struct DeadlineStore {
    inner: Arc<dyn Store>,
    timeout: Duration,
}

impl DeadlineStore {
    pub(crate) fn new(inner: Arc<dyn Store>, timeout: Duration) -> Self {
        assert!(!timeout.is_zero());
        Self { inner, timeout }
    }

    async fn within<T>(&self, op: &'static str, call: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(format!("{op}: no answer within {} ms", self.timeout.as_millis()))),
        }
    }
}

#[async_trait]
impl Store for DeadlineStore {
    async fn append_batch(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        self.within("append_batch", self.inner.append_batch(batch)).await
    }

    async fn last_seq(&self, room: &str) -> StoreResult<u64> {
        self.within("last_seq", self.inner.last_seq(room)).await
    }

    async fn range(&self, room: &str, after: u64, upto: u64, limit: usize) -> StoreResult<Vec<Msg>> {
        self.within("range", self.inner.range(room, after, upto, limit)).await
    }

    async fn history(&self, room: &str, before: Option<u64>, limit: usize) -> StoreResult<(Vec<Msg>, bool)> {
        self.within("history", self.inner.history(room, before, limit)).await
    }

    async fn add_conversation(&self, user: &str, room: &str, public_max: usize) -> StoreResult<Added> {
        self.within("add_conversation", self.inner.add_conversation(user, room, public_max)).await
    }

    async fn forget_conversation(&self, user: &str, room: &str) -> StoreResult<bool> {
        self.within("forget_conversation", self.inner.forget_conversation(user, room)).await
    }

    async fn mark_read(&self, user: &str, room: &str, seq: u64) -> StoreResult<Option<Marker>> {
        self.within("mark_read", self.inner.mark_read(user, room, seq)).await
    }

    async fn conversations(
        &self,
        user: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<(Vec<Conversation>, bool)> {
        self.within("conversations", self.inner.conversations(user, before, limit)).await
    }

    async fn create_user(&self, user: &UserRecord) -> StoreResult<bool> {
        self.within("create_user", self.inner.create_user(user)).await
    }

    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        self.within("get_user", self.inner.get_user(username)).await
    }

    async fn check_ready(&self) -> StoreResult<()> {
        self.within("check_ready", self.inner.check_ready()).await
    }

    async fn horizon(&self, room: &str) -> StoreResult<u64> {
        self.within("horizon", self.inner.horizon(room)).await
    }

    async fn rooms_page(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<RoomInfo>> {
        self.within("rooms_page", self.inner.rooms_page(after, limit)).await
    }

    async fn trim_room(&self, room: &str, trim: Trim, rows_max: usize) -> StoreResult<Trimmed> {
        self.within("trim_room", self.inner.trim_room(room, trim, rows_max)).await
    }

    async fn delete_account(&self, user: &str, now_ms: u64) -> StoreResult<Option<bool>> {
        self.within("delete_account", self.inner.delete_account(user, now_ms)).await
    }

    async fn erase_user_messages(&self, user: &str, after: Option<&str>, rows_max: usize) -> StoreResult<Erased> {
        self.within("erase_user_messages", self.inner.erase_user_messages(user, after, rows_max)).await
    }

    async fn deleted_users_since(&self, since_ms: u64) -> StoreResult<Vec<String>> {
        self.within("deleted_users_since", self.inner.deleted_users_since(since_ms)).await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.within("stats", self.inner.stats()).await
    }

    /// Not within the store's deadline: a backup takes as long as the
    /// database is large; the engine bounds it (and cancels it) itself.
    async fn backup(&self, dir: &Path, cancel: Arc<AtomicBool>) -> StoreResult<BackupReport> {
        self.inner.backup(dir, cancel).await
    }
}
