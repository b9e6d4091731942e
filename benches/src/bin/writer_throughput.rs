//! System bench: the writer's sustained throughput into a store (MongoDB
//! or the embedded one), with N concurrent senders, each sending its next
//! message as soon as the previous one is acknowledged (closed loop).
//!
//! Runs the engine in-process (real writer, rooms and store; no network),
//! so what it measures is the writer and the store, not the gateway. The
//! store is wrapped to record every batch's size and commit latency.
//!
//!   target/release/writer_throughput --mongo-uri mongodb://127.0.0.1:27017/ --senders 100

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Parser;
use hdrhistogram::Histogram;
use std::sync::Mutex;
use viche_engine::clock::now_ms;
use viche_engine::delivery::OutItem;
use viche_engine::store::embedded::EmbeddedStore;
use viche_engine::store::mongo::{MongoStore, MongoWriteConcern};
use viche_engine::store::{
    Added, Appended, Erased, Marker, NewMessage, RoomInfo, Store, StoreResult, StoreStats, Trim, Trimmed, UserRecord,
};
use viche_engine::{Engine, EngineConfig, Flow};
use viche_protocol::limits::Rate;
use viche_protocol::{decode_server, ClientFrame, Conversation, Encoding, Msg, ServerFrame};

#[derive(Parser)]
struct Args {
    /// MongoDB to write to; without it, the embedded store in a temp dir.
    #[arg(long)]
    mongo_uri: Option<String>,
    #[arg(long, default_value_t = 100)]
    senders: usize,
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    #[arg(long, default_value_t = 3)]
    warmup_s: u64,
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
}

/// Records each batch's size and commit time, then delegates.
struct Measured {
    inner: Arc<dyn Store>,
    measuring: AtomicBool,
    batches: Mutex<(Histogram<u64>, Histogram<u64>)>,
    stored: AtomicU64,
}

#[async_trait]
impl Store for Measured {
    async fn append_batch(&self, batch: &[NewMessage]) -> StoreResult<Vec<Appended>> {
        let started = Instant::now();
        let result = self.inner.append_batch(batch).await;
        if result.is_ok() && self.measuring.load(Ordering::Relaxed) {
            let mut h = self.batches.lock().unwrap();
            let _ = h.0.record(batch.len() as u64);
            let _ = h.1.record(started.elapsed().as_micros().max(1) as u64);
            self.stored.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        result
    }
    async fn last_seq(&self, room: &str) -> StoreResult<u64> {
        self.inner.last_seq(room).await
    }
    async fn range(&self, room: &str, after: u64, upto: u64, limit: usize) -> StoreResult<Vec<Msg>> {
        self.inner.range(room, after, upto, limit).await
    }
    async fn history(&self, room: &str, before: Option<u64>, limit: usize) -> StoreResult<(Vec<Msg>, bool)> {
        self.inner.history(room, before, limit).await
    }
    async fn add_conversation(&self, user: &str, room: &str, public_max: usize) -> StoreResult<Added> {
        self.inner.add_conversation(user, room, public_max).await
    }
    async fn forget_conversation(&self, user: &str, room: &str) -> StoreResult<bool> {
        self.inner.forget_conversation(user, room).await
    }
    async fn mark_read(&self, user: &str, room: &str, seq: u64) -> StoreResult<Option<Marker>> {
        self.inner.mark_read(user, room, seq).await
    }
    async fn conversations(
        &self,
        user: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<(Vec<Conversation>, bool)> {
        self.inner.conversations(user, before, limit).await
    }
    async fn create_user(&self, user: &UserRecord) -> StoreResult<bool> {
        self.inner.create_user(user).await
    }
    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        self.inner.get_user(username).await
    }
    async fn check_ready(&self) -> StoreResult<()> {
        self.inner.check_ready().await
    }
    async fn horizon(&self, room: &str) -> StoreResult<u64> {
        self.inner.horizon(room).await
    }
    async fn rooms_page(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<RoomInfo>> {
        self.inner.rooms_page(after, limit).await
    }
    async fn trim_room(&self, room: &str, trim: Trim, rows_max: usize) -> StoreResult<Trimmed> {
        self.inner.trim_room(room, trim, rows_max).await
    }
    async fn delete_account(&self, user: &str, now_ms: u64) -> StoreResult<Option<bool>> {
        self.inner.delete_account(user, now_ms).await
    }
    async fn erase_user_messages(&self, user: &str, after: Option<&str>, rows_max: usize) -> StoreResult<Erased> {
        self.inner.erase_user_messages(user, after, rows_max).await
    }
    async fn deleted_users_since(&self, since_ms: u64) -> StoreResult<Vec<String>> {
        self.inner.deleted_users_since(since_ms).await
    }
    async fn stats(&self) -> StoreResult<StoreStats> {
        self.inner.stats().await
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = std::process::id();
    let _tmp;
    let inner: Arc<dyn Store> = match &args.mongo_uri {
        Some(uri) => {
            Arc::new(MongoStore::connect(uri, &format!("writer_bench_{run}"), &MongoWriteConcern::default()).await?)
        }
        None => {
            _tmp = tempfile_dir()?;
            Arc::new(EmbeddedStore::open(&_tmp)?)
        }
    };
    let store = Arc::new(Measured {
        inner,
        measuring: AtomicBool::new(false),
        batches: Mutex::new((Histogram::new(3)?, Histogram::new(3)?)),
        stored: AtomicU64::new(0),
    });
    let unlimited = Rate { per_second: 1e9, burst: u32::MAX };
    let config = EngineConfig { send_rate: unlimited, join_rate: unlimited, ..EngineConfig::default() };
    let engine = Engine::start(config, store.clone(), b"writer-bench-secret-0123").await?;

    let stop = Arc::new(AtomicBool::new(false));
    let pad = "x".repeat(args.body_bytes);
    let mut tasks = Vec::new();
    for s in 0..args.senders {
        let (engine, stop, pad) = (engine.clone(), stop.clone(), pad.clone());
        tasks.push(tokio::spawn(async move {
            let mut session = engine
                .open_session(&format!("w{s}"), Encoding::MsgPack, now_ms() + 3_600_000)
                .await
                .expect("a session");
            // Ten senders share a room, so batches mix rooms and rooms mix senders.
            let room = format!("wb{}", s / 10);
            assert_eq!(
                session.handle(ClientFrame::Join { req: 0, room: room.clone(), since: None }).await,
                Flow::Continue
            );
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sent += 1;
                let frame = ClientFrame::Send {
                    req: sent,
                    room: room.clone(),
                    body: pad.clone(),
                    cid: format!("{s}-{sent}"),
                    reply_to: None,
                };
                assert_eq!(session.handle(frame).await, Flow::Continue);
                wait_for_ack(&session, sent).await;
            }
            sent
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup_s)).await;
    store.measuring.store(true, Ordering::Relaxed);
    let measured_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration_s)).await;
    store.measuring.store(false, Ordering::Relaxed);
    let secs = measured_from.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let stored = store.stored.load(Ordering::Relaxed);
    let h = store.batches.lock().unwrap();
    let store_name = if args.mongo_uri.is_some() { "mongodb" } else { "embedded" };
    println!("store {store_name}, {} senders, {secs:.1} s measured", args.senders);
    println!("stored: {stored} messages, {:.0} messages/s", stored as f64 / secs);
    println!(
        "batch size: n={} mean {:.1} p50 {} p90 {} p99 {} max {}",
        h.0.len(),
        h.0.mean(),
        h.0.value_at_quantile(0.5),
        h.0.value_at_quantile(0.9),
        h.0.value_at_quantile(0.99),
        h.0.max()
    );
    println!(
        "commit latency (ms): p50 {:.2} p99 {:.2} max {:.2}",
        h.1.value_at_quantile(0.5) as f64 / 1000.0,
        h.1.value_at_quantile(0.99) as f64 / 1000.0,
        h.1.max() as f64 / 1000.0
    );
    Ok(())
}

/// Waits until the ack of `req` is in the session's outbox (messages and
/// other frames are dropped: this bench measures the writer).
async fn wait_for_ack(session: &viche_engine::Session, req: u64) {
    let outbox = &session.session_handle().outbox;
    loop {
        let mut items = Vec::new();
        assert!(outbox.drain(&mut items).is_none(), "the bench session was closed");
        for item in items {
            if let OutItem::Frame(bytes) = item {
                if let Ok(ServerFrame::Ack { req: r, .. }) = decode_server(&bytes, Encoding::MsgPack) {
                    if r == req {
                        return;
                    }
                }
            }
        }
        outbox.notified().await;
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("viche-writer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
