//! Retention (docs/protocol.md, "Retention"; docs/operations.md,
//! "Retention"): by count under concurrent sends, and by age; the horizon
//! as `join` (`first_seq`, `truncated`) and `history` (`more: false`) show it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;

/// Whether `seqs` are consecutive.
fn consecutive(seqs: &[u64]) -> bool {
    seqs.windows(2).all(|w| w[1] == w[0] + 1)
}

/// A retention pass now, through the admin API; its report.
async fn retention_now(server: &Server) -> serde_json::Value {
    let (status, body) = server.admin("POST", "retention", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn retention_by_count_under_concurrent_sends_keeps_every_ack_above_the_horizon() {
    let server = Server::start_with(Opts {
        admin: true,
        extra_args: [
            "--retention-messages-per-room",
            "50",
            "--retention-interval-ms",
            "100",
            "--retention-batch-rows",
            "20",
        ]
        .map(String::from)
        .to_vec(),
        ..Opts::default()
    })
    .await;
    let reader_token = server.user("reader").await;

    // Three senders at once, while retention runs every 100 ms.
    let mut senders = Vec::new();
    for i in 0..3 {
        let mut conn = server.session(&format!("sender{i}")).await;
        conn.join("busy", None).await.unwrap();
        senders.push(tokio::spawn(async move { send_n(&mut conn, "busy", 60, &format!("s{i}")).await }));
    }
    // Meanwhile a reader pages the history: never a gap.
    let mut snapshots = 0;
    while senders.iter().any(|s| !s.is_finished()) {
        let history = seqs(&full_history_http(&server, &reader_token, "busy").await);
        assert!(consecutive(&history), "a gap above the horizon: {history:?}");
        snapshots += 1;
        // Within the history rate (10 pages a second).
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(snapshots > 0);
    let mut acked = BTreeMap::new();
    for sender in senders {
        for ack in sender.await.unwrap() {
            acked.insert(ack.seq, ack.cid);
        }
    }
    assert_eq!(acked.len(), 180);
    let last = *acked.keys().last().unwrap();
    assert_eq!(last, 180, "one seq per message");

    retention_now(&server).await;
    let kept = full_history_http(&server, &reader_token, "busy").await;
    assert_eq!(seqs(&kept), (131..=180).collect::<Vec<_>>(), "the newest 50, dense");
    for m in &kept {
        assert_eq!(acked.get(&m.seq), Some(&m.cid), "acknowledged seq {} is what was sent", m.seq);
    }
    let page = server.http().history(&reader_token, "busy", Some(131), Some(100)).await.unwrap();
    assert!(page.messages.is_empty() && !page.more, "history ends at the horizon");

    // A resume from below the horizon replays from first_seq, and says so.
    let mut late = server.connect(&reader_token).await;
    let ok = late.join("busy", Some(10)).await.unwrap();
    assert_eq!((ok.seq, ok.first_seq, ok.truncated, ok.more), (180, 131, true, false));
    let replayed = late.recv_msgs(50, T).await.unwrap();
    assert_eq!(seqs(&replayed), (131..=180).collect::<Vec<_>>());
    // From above it: nothing skipped, not truncated.
    let mut other = server.connect(&reader_token).await;
    let ok = other.join("busy", Some(170)).await.unwrap();
    assert_eq!((ok.first_seq, ok.truncated), (131, false));
    assert_eq!(seqs(&other.recv_msgs(10, T).await.unwrap()), (171..=180).collect::<Vec<_>>());
    // A join without since learns where history begins.
    let mut plain = server.connect(&reader_token).await;
    let ok = plain.join("busy", None).await.unwrap();
    assert_eq!((ok.first_seq, ok.truncated), (131, false));
    assert_eq!(plain.join("quiet", None).await.unwrap().first_seq, 0, "a room with nothing stored");

    // Metrics: what retention removed.
    let metrics = server.http().get_raw("/metrics", None).await.unwrap().body;
    assert!(metrics.contains("viche_messages_removed_total{reason=\"retention\"} 130"), "{metrics}");
}

#[tokio::test]
async fn retention_by_age_removes_old_messages_and_a_resume_below_it_is_truncated() {
    // 0.00005 days = 4.32 s; passes only when asked (the interval is long).
    let server = Server::start_with(Opts {
        admin: true,
        extra_args: ["--retention-days", "0.00005", "--retention-interval-ms", "600000"].map(String::from).to_vec(),
        ..Opts::default()
    })
    .await;
    let token = server.user("ann").await;
    let mut conn = server.connect(&token).await;
    conn.join("old", None).await.unwrap();
    send_n(&mut conn, "old", 5, "before").await;
    let first = retention_now(&server).await;
    assert_eq!(first["messages_removed"], 0, "nothing is old yet: {first}");
    tokio::time::sleep(Duration::from_millis(4_600)).await;
    let fresh_from = now_ms();
    send_n(&mut conn, "old", 3, "after").await;
    let report = retention_now(&server).await;
    assert_eq!(report["messages_removed"], 5, "{report}");
    assert!(report["oldest_message_ts"].as_u64().unwrap() >= fresh_from - 1_000, "{report}");

    let kept = full_history_http(&server, &token, "old").await;
    assert_eq!(seqs(&kept), vec![6, 7, 8]);
    let mut resume = server.connect(&token).await;
    let ok = resume.join("old", Some(2)).await.unwrap();
    assert_eq!((ok.first_seq, ok.truncated), (6, true));
    assert_eq!(seqs(&resume.recv_msgs(3, T).await.unwrap()), vec![6, 7, 8]);
    // The conversation still shows its newest message.
    let conversations = resume.conversations(None, None).await.unwrap();
    let old = conversations.items.iter().find(|c| c.room == "old").expect("a conversation");
    assert_eq!((old.last_seq, old.last.as_ref().map(|m| m.seq)), (8, Some(8)));

    let (status, stats) = server.admin("GET", "stats", None).await;
    assert_eq!(status, 200);
    assert_eq!((stats["messages"].as_u64(), stats["rooms"].as_u64()), (Some(3), Some(1)), "{stats}");
    assert!(stats["retention_days"].as_f64().is_some_and(|d| d > 0.0), "{stats}");
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        let metrics = server.http().get_raw("/metrics", None).await.unwrap().body;
        if metrics.contains("viche_store_size_bytes") && metrics.contains("viche_oldest_message_age_seconds") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the store gauges were not exported");
}
