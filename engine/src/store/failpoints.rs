//! The store behind the `store.*` failpoints (feature `failpoints`): every
//! call evaluates its failpoint first, then goes to the real store. The
//! engine wraps whichever store it was given, so both implementations are
//! exercised the same way.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use viche_protocol::{Conversation, Msg};

use super::{
    Added, Appended, BackupReport, Erased, Marker, NewMessage, RoomInfo, Store, StoreError, StoreResult, StoreStats,
    Trim, Trimmed, UserRecord,
};
use crate::faults;

pub(crate) struct FailpointStore(pub Arc<dyn Store>);

fn injected(name: &str) -> StoreError {
    StoreError::Unavailable(format!("failpoint {name}"))
}

#[async_trait]
impl Store for FailpointStore {
    async fn append_batch(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        match faults::eval("store.append").await {
            Some(None) => return Err(injected("store.append")),
            // A poison message: only a batch holding it fails.
            Some(Some(text)) if batch.iter().any(|m| m.body.contains(&text)) => {
                return Err(injected("store.append (poison)"))
            }
            _ => {}
        }
        self.0.append_batch(batch).await
    }

    async fn last_seq(&self, room: &str) -> StoreResult<u64> {
        if faults::eval("store.last_seq").await.is_some() {
            return Err(injected("store.last_seq"));
        }
        self.0.last_seq(room).await
    }

    async fn range(&self, room: &str, after: u64, upto: u64, limit: usize) -> StoreResult<Vec<Msg>> {
        if faults::eval("store.range").await.is_some() {
            return Err(injected("store.range"));
        }
        self.0.range(room, after, upto, limit).await
    }

    async fn history(&self, room: &str, before: Option<u64>, limit: usize) -> StoreResult<(Vec<Msg>, bool)> {
        self.0.history(room, before, limit).await
    }

    async fn add_conversation(&self, user: &str, room: &str, public_max: usize) -> StoreResult<Added> {
        if faults::eval("store.conversations").await.is_some() {
            return Err(injected("store.conversations"));
        }
        self.0.add_conversation(user, room, public_max).await
    }

    async fn forget_conversation(&self, user: &str, room: &str) -> StoreResult<bool> {
        if faults::eval("store.conversations").await.is_some() {
            return Err(injected("store.conversations"));
        }
        self.0.forget_conversation(user, room).await
    }

    async fn mark_read(&self, user: &str, room: &str, seq: u64) -> StoreResult<Option<Marker>> {
        if faults::eval("store.conversations").await.is_some() {
            return Err(injected("store.conversations"));
        }
        self.0.mark_read(user, room, seq).await
    }

    async fn conversations(
        &self,
        user: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<(Vec<Conversation>, bool)> {
        if faults::eval("store.conversations").await.is_some() {
            return Err(injected("store.conversations"));
        }
        self.0.conversations(user, before, limit).await
    }

    async fn create_user(&self, user: &UserRecord) -> StoreResult<bool> {
        self.0.create_user(user).await
    }

    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        self.0.get_user(username).await
    }

    async fn check_ready(&self) -> StoreResult<()> {
        self.0.check_ready().await
    }

    async fn horizon(&self, room: &str) -> StoreResult<u64> {
        self.0.horizon(room).await
    }

    async fn rooms_page(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<RoomInfo>> {
        self.0.rooms_page(after, limit).await
    }

    async fn trim_room(&self, room: &str, trim: Trim, rows_max: usize) -> StoreResult<Trimmed> {
        if faults::eval("store.trim").await.is_some() {
            return Err(injected("store.trim"));
        }
        self.0.trim_room(room, trim, rows_max).await
    }

    async fn delete_account(&self, user: &str, now_ms: u64) -> StoreResult<Option<bool>> {
        self.0.delete_account(user, now_ms).await
    }

    async fn erase_user_messages(&self, user: &str, after: Option<&str>, rows_max: usize) -> StoreResult<Erased> {
        self.0.erase_user_messages(user, after, rows_max).await
    }

    async fn deleted_users_since(&self, since_ms: u64) -> StoreResult<Vec<String>> {
        self.0.deleted_users_since(since_ms).await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.0.stats().await
    }

    async fn backup(&self, dir: &Path, cancel: Arc<AtomicBool>) -> StoreResult<BackupReport> {
        self.0.backup(dir, cancel).await
    }
}
