//! The store's upkeep, in the background: the store only grows unless
//! something removes what an operator no longer wants to keep.
//!
//! Every `retention_interval_ms` one pass walks the rooms with stored
//! messages, a page at a time, and removes each room's oldest messages
//! that retention says must go (`--retention-days`,
//! `--retention-messages-per-room`; both off by default), in transactions
//! of at most `retention_batch_rows_max` rows with a pause between them, so
//! that the writer's commits never wait long (redb has one writer at a
//! time). Then it refreshes the store's gauges: size, oldest message. An
//! admin request runs a pass at once; a purge removes a whole room the
//! same way. Seqs are never reused: a room's horizon only moves up, and
//! what stays above it is dense (docs/protocol.md, "Retention").

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::clock::now_ms;
use crate::config::EngineConfig;
use crate::metrics::{MESSAGES_REMOVED, OLDEST_MESSAGE_AGE, RETENTION_PASSES, STORE_SIZE};
use crate::store::{Store, StoreError, Trim};

/// Rooms read per page of a pass.
pub(crate) const ROOMS_PAGE_MAX: usize = 1000;
/// The pause after each batch that removed rows: the writer's turn.
const BATCH_PAUSE_MS: u64 = 10;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Rooms with stored messages, all visited.
    pub rooms: u64,
    pub messages_removed: u64,
    /// When the oldest message still stored was stored (ms since the epoch).
    pub oldest_message_ts: Option<u64>,
    pub store_bytes: u64,
}

pub(crate) struct Retention {
    store: Arc<dyn Store>,
    age_ms: Option<u64>,
    room_messages_max: Option<u64>,
    rows_max: usize,
    /// One pass at a time (the background one, or an admin's).
    pass: tokio::sync::Mutex<()>,
}

impl Retention {
    pub(crate) fn new(store: Arc<dyn Store>, config: &EngineConfig) -> Self {
        Self {
            store,
            age_ms: config.retention_age_ms,
            room_messages_max: config.retention_room_messages_max,
            rows_max: config.retention_batch_rows_max,
            pass: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs a pass every `interval` (the first at once), for the life of
    /// the process. A failed pass is logged and counted; the next one
    /// starts over.
    pub(crate) fn spawn(self: &Arc<Self>, interval: Duration) {
        let retention = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match retention.run().await {
                    Ok(report) if report.messages_removed > 0 => {
                        tracing::info!(removed = report.messages_removed, rooms = report.rooms, "retention pass")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention pass failed; retrying at the next interval"),
                }
            }
        });
    }

    /// One pass now (waiting for one in progress to end first).
    pub(crate) async fn run(&self) -> Result<RetentionReport, StoreError> {
        let _one_at_a_time = self.pass.lock().await;
        let result = self.pass().await;
        RETENTION_PASSES.counter_with(if result.is_ok() { "ok" } else { "failed" }).increment(1);
        result
    }

    async fn pass(&self) -> Result<RetentionReport, StoreError> {
        let now = now_ms();
        let ts_before = self.age_ms.map(|age| now.saturating_sub(age));
        let mut report = RetentionReport::default();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.rooms_page(after.as_deref(), ROOMS_PAGE_MAX).await?;
            for room in &page {
                report.rooms += 1;
                let seq_upto = self.room_messages_max.map_or(0, |keep| room.last_seq.saturating_sub(keep));
                let too_old = match (ts_before, room.first_ts) {
                    (Some(before), Some(first)) => first < before,
                    // Not known (MongoDB): ask the store.
                    (Some(_), None) => room.horizon < room.last_seq,
                    (None, _) => false,
                };
                let mut first_ts = room.first_ts;
                if seq_upto > room.horizon || too_old {
                    let (removed, first) = self.trim(&room.room, Trim { seq_upto, ts_before }, "retention").await?;
                    report.messages_removed += removed;
                    first_ts = first;
                }
                if let Some(ts) = first_ts {
                    report.oldest_message_ts = Some(report.oldest_message_ts.map_or(ts, |oldest| oldest.min(ts)));
                }
            }
            if page.len() < ROOMS_PAGE_MAX {
                break;
            }
            after = page.last().map(|r| r.room.clone());
            tokio::task::yield_now().await;
        }
        report.store_bytes = self.store.stats().await?.bytes;
        STORE_SIZE.gauge().set(report.store_bytes as f64);
        let age_s = report.oldest_message_ts.map_or(0.0, |ts| now.saturating_sub(ts) as f64 / 1000.0);
        OLDEST_MESSAGE_AGE.gauge().set(age_s);
        Ok(report)
    }

    /// Removes what `trim` says from `room`, a bounded batch at a time;
    /// returns how many went, and when the oldest one left was stored.
    pub(crate) async fn trim(
        &self,
        room: &str,
        trim: Trim,
        reason: &'static str,
    ) -> Result<(u64, Option<u64>), StoreError> {
        let mut removed = 0;
        loop {
            let batch = self.store.trim_room(room, trim, self.rows_max).await?;
            removed += batch.removed;
            MESSAGES_REMOVED.counter_with(reason).increment(batch.removed);
            if batch.done || batch.removed == 0 {
                return Ok((removed, batch.first_ts));
            }
            tokio::time::sleep(Duration::from_millis(BATCH_PAUSE_MS)).await;
        }
    }

    /// The rows per batch (user erasure uses the same bound).
    pub(crate) fn rows_max(&self) -> usize {
        self.rows_max
    }
}
