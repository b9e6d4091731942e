//! Room fan-out: what a room does per published message. One `msg` frame
//! (100-byte body) is encoded once into an `EncodedFrame` (shared `Bytes`),
//! then pushed into every member's outbox with `SessionHandle::send_shared`, exactly
//! as `room.rs`'s `broadcast` does. Encoding is measured by `codec.rs`, not
//! here.
//!
//! Only the push loop is timed (`iter_custom`). After each timed round the
//! outboxes are drained untimed, as the connections' write loops would, so
//! no outbox grows past a few frames and the slow-consumer path is never
//! taken (every push is checked to have returned `Ok`). For one member the
//! timed block is 32 rounds, so the clock read does not dominate.
//!
//! Run: `cargo bench -p viche-benches --bench fanout`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use viche_engine::delivery::{EncodedFrame, OutItem, Outbox, SessionHandle};
use viche_protocol::limits::{OUTBOX_BYTES_MAX_DEFAULT, OUTBOX_FRAMES_MAX_DEFAULT};
use viche_protocol::{Encoding, Msg, ServerFrame};

fn msg_frame() -> ServerFrame {
    let body: String = "The quick brown fox jumps over the lazy dog. ".chars().cycle().take(100).collect();
    ServerFrame::Msg(Msg {
        room: "general".into(),
        seq: 1_234_567,
        from: "alice".into(),
        body,
        cid: "c-0123456789abcdef".into(),
        ts: 1_764_000_000_000,
        ..Msg::default()
    })
}

fn members(n: usize) -> Vec<Arc<SessionHandle>> {
    (0..n)
        .map(|i| {
            Arc::new(SessionHandle {
                id: i as u64,
                user: format!("user{i}").into(),
                encoding: Encoding::MsgPack,
                // The server's default bounds: the untimed drains keep every
                // outbox far below them.
                outbox: Outbox::new(OUTBOX_FRAMES_MAX_DEFAULT, OUTBOX_BYTES_MAX_DEFAULT),
            })
        })
        .collect()
}

fn fanout(c: &mut Criterion) {
    // All members speak MessagePack, so the room encodes once, without JSON.
    let frame = EncodedFrame::new(&msg_frame(), false);

    let mut g = c.benchmark_group("fanout");
    for n in [1usize, 100, 10_000] {
        let peers = members(n);
        // Rounds per timed block: enough that one block is well above the
        // cost of reading the clock, few enough to stay under the bound.
        let rounds = (32 / n).max(1) as u64;
        assert!((rounds as usize) < OUTBOX_FRAMES_MAX_DEFAULT);
        let mut drained: Vec<OutItem> = Vec::with_capacity(rounds as usize);

        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("push_msg", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut failures = 0usize;
                let mut done = 0u64;
                while done < iters {
                    let k = rounds.min(iters - done);
                    let start = Instant::now();
                    for _ in 0..k {
                        for p in &peers {
                            if p.send_shared(&frame, true).is_err() {
                                failures += 1;
                            }
                        }
                    }
                    timed += start.elapsed();
                    done += k;
                    // Untimed: what each connection's write loop does.
                    for p in &peers {
                        let close = p.outbox.drain(&mut drained);
                        assert!(close.is_none(), "no outbox may be closing");
                        drained.clear();
                    }
                }
                assert_eq!(failures, 0, "a push failed: the slow-consumer path was taken");
                timed
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
