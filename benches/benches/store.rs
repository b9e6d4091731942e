//! The embedded store's group commit: one `append_batch` of 1, 64 and 1024
//! new messages (100-byte bodies, unique cids, one room) into a fresh redb
//! file in a temp dir. Every commit fsyncs (redb `Durability::Immediate`),
//! so these figures depend mostly on the disk's fsync latency: on tmpfs or
//! a write-back cache they are far lower than on a real device.
//!
//! The database grows as the benchmark runs (every iteration stores new
//! messages), as it does in service.
//!
//! Run: `cargo bench -p viche-benches --bench store`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use viche_engine::store::embedded::EmbeddedStore;
use viche_engine::store::{Appended, Event, NewMessage, Store};

fn batch(n: usize, next_cid: &AtomicU64, room: &Arc<str>, from: &Arc<str>, body: &str) -> Vec<NewMessage> {
    (0..n)
        .map(|_| NewMessage {
            room: room.clone(),
            from: from.clone(),
            cid: format!("c{}", next_cid.fetch_add(1, Ordering::Relaxed)),
            body: body.to_owned(),
            ts_ms: 1_764_000_000_000,
            event: Event::Message { reply_to: None },
            fence: None,
        })
        .collect()
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    eprintln!("store bench: redb file in {}", dir.path().display());

    let room: Arc<str> = "general".into();
    let from: Arc<str> = "alice".into();
    let body: String = "The quick brown fox jumps over the lazy dog. ".chars().cycle().take(100).collect();
    assert_eq!(body.len(), 100);
    let next_cid = AtomicU64::new(0);

    let mut g = c.benchmark_group("store_append_batch");
    // Each iteration is at least one fsync: keep the sample count low.
    g.sample_size(20);
    for n in [1usize, 64, 1024] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("embedded", n), &n, |b, &n| {
            b.to_async(&rt).iter_batched(
                || batch(n, &next_cid, &room, &from, &body),
                |msgs| {
                    let store = &store;
                    async move {
                        let out = store.append_batch(&msgs).await.unwrap();
                        // Unique cids: every message must be newly stored.
                        assert!(out.len() == n && out.iter().all(|a| matches!(a, Appended::Stored(_))));
                        out
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
    drop(store);
    drop(dir);
}

criterion_group!(benches, store);
criterion_main!(benches);
