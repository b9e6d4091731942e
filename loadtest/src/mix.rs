//! What a fan-out sender does at its rate (`--mix`): sends, and the
//! protocol 1.1 operations edits, reactions and reads, by weight.
//!
//! - An **edit** targets one of the sender's own recent messages (known
//!   from the seqs of its acks); its body is stamped like a send's.
//! - A **reaction** targets one of the room's recent ordinary messages
//!   and toggles this user's reaction with one emoji (on, then off, ...),
//!   so every one changes the state and is stored as a new event, never a
//!   repeat; its body is empty, so the two stamps travel in its `cid`.
//! - Edits and reactions are answered with `ack` and delivered to every
//!   member as `msg` frames in the room's seq stream: their deliveries are
//!   checked (loss, gaps, duplicates) and timed like a message's.
//! - A **read** moves the reader's marker to the newest seq it has seen;
//!   it is answered `ok`, and when the marker moved, the user's other
//!   session receives `read{room, seq}`. Each sender then has a second
//!   session (no join) of the same user, which times that push. A read is
//!   *expected* to push when its seq is past the marker as the reader knows
//!   it (its earlier reads and the acks of its own writes, each of which
//!   moves its marker) and none of its writes is unanswered.
//!
//! An edit or reaction due before its sender has a target (no message of
//! its own acknowledged yet, or none seen in the room) goes out as a send
//! and is counted as a fallback of its kind.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Serialize, Serializer};
use viche_client::MsgKind;

use crate::report::h;

/// An operation of a sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(usize)]
pub enum Op {
    Send,
    Edit,
    React,
    Read,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Send, Op::Edit, Op::React, Op::Read];

    /// Its name in `--mix` and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Op::Send => "send",
            Op::Edit => "edit",
            Op::React => "react",
            Op::Read => "read",
        }
    }

    /// Answered with `ack`, stored with a seq, delivered to every member.
    pub fn delivers(self) -> bool {
        !matches!(self, Op::Read)
    }

    /// The operation a delivered `msg` comes from (none for a deletion,
    /// which no sender of viche-load makes).
    pub fn of_msg(kind: Option<MsgKind>) -> Option<Op> {
        match kind {
            None => Some(Op::Send),
            Some(MsgKind::Edit) => Some(Op::Edit),
            Some(MsgKind::Reaction) => Some(Op::React),
            Some(MsgKind::Delete) => None,
        }
    }

    /// The name of its histogram of `metric`.
    pub fn hist(self, metric: Metric) -> &'static str {
        match (self, metric) {
            (Op::Send, Metric::Deliver) => h::LATENCY,
            (Op::Send, Metric::DeliverFromDue) => h::LATENCY_FROM_DUE,
            (Op::Send, _) => h::ACK,
            (Op::Edit, Metric::Deliver) => h::EDIT_LATENCY,
            (Op::Edit, Metric::DeliverFromDue) => h::EDIT_LATENCY_FROM_DUE,
            (Op::Edit, _) => h::EDIT_ACK,
            (Op::React, Metric::Deliver) => h::REACT_LATENCY,
            (Op::React, Metric::DeliverFromDue) => h::REACT_LATENCY_FROM_DUE,
            (Op::React, _) => h::REACT_ACK,
            (Op::Read, Metric::Push) => h::READ_PUSH,
            (Op::Read, _) => h::READ_OK,
        }
    }

    /// The name of its counter `k`: a send's rates, answers and errors
    /// keep the names they had before `--mix` (`sends`, `acks`, ...).
    pub fn counter(self, k: OpK) -> String {
        match crate::live::legacy(self, k) {
            Some(k) => k.name().to_string(),
            None => format!("{}_{}", self.name(), k.suffix()),
        }
    }
}

/// What is timed of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// The request's write to each member's arrival of its `msg`.
    Deliver,
    /// The same from when it was due by the schedule.
    DeliverFromDue,
    /// The request's write to its `ack` (`ok` for a read).
    Ack,
    /// A read's write to the `read` push at the user's second session.
    Push,
}

/// The counters of each operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum OpK {
    /// Due by the schedule within the measured window (the offered load).
    Due,
    /// Written to a socket, whole run.
    Performed,
    /// Written during the measured window (the achieved load).
    InWindow,
    /// Answered with `ack` (a read: `ok`).
    Answered,
    Errors,
    Unanswered,
    /// An edit or reaction due before its sender had a target, sent as a message instead.
    Fallbacks,
    /// `msg` frames of this kind received in the watched rooms (distinct seqs).
    Deliveries,
    /// What the sessions should have received of this kind: its acknowledged seqs after each one's join.
    Expected,
    Lost,
    Duplicates,
    /// Missing seqs of this kind (a session's jumps, attributed by the seqs' acks).
    Gaps,
    /// Reads that should move the marker (and push).
    PushesExpected,
    /// `read` pushes received and matched to a read.
    Pushes,
    /// Expected pushes never received.
    PushesLost,
    /// Pushes that match no read (or arrive out of order).
    PushesUnmatched,
    /// A second push of one seq.
    PushesDuplicate,
}

impl OpK {
    pub const ALL: [OpK; 17] = [
        OpK::Due,
        OpK::Performed,
        OpK::InWindow,
        OpK::Answered,
        OpK::Errors,
        OpK::Unanswered,
        OpK::Fallbacks,
        OpK::Deliveries,
        OpK::Expected,
        OpK::Lost,
        OpK::Duplicates,
        OpK::Gaps,
        OpK::PushesExpected,
        OpK::Pushes,
        OpK::PushesLost,
        OpK::PushesUnmatched,
        OpK::PushesDuplicate,
    ];

    fn suffix(self) -> &'static str {
        match self {
            OpK::Due => "due_in_window",
            OpK::Performed => "performed",
            OpK::InWindow => "in_window",
            OpK::Answered => "answered",
            OpK::Errors => "errors",
            OpK::Unanswered => "unanswered",
            OpK::Fallbacks => "fallbacks",
            OpK::Deliveries => "deliveries",
            OpK::Expected => "expected_deliveries",
            OpK::Lost => "lost",
            OpK::Duplicates => "duplicates",
            OpK::Gaps => "gaps",
            OpK::PushesExpected => "pushes_expected",
            OpK::Pushes => "pushes",
            OpK::PushesLost => "pushes_lost",
            OpK::PushesUnmatched => "pushes_unmatched",
            OpK::PushesDuplicate => "pushes_duplicate",
        }
    }
}

/// The weights of `--mix`, by [`Op`]. The default is sends only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 4],
}

impl Default for Mix {
    fn default() -> Self {
        Mix { weights: [1, 0, 0, 0] }
    }
}

/// The emoji of the reactions (a user keeps at most 16 per message).
pub const EMOJI: [&str; 4] = ["👍", "🎉", "👀", "🚀"];

/// The largest weight of one operation.
const WEIGHT_MAX: u32 = 1_000_000;

impl Mix {
    pub fn weight(&self, op: Op) -> u32 {
        self.weights[op as usize]
    }

    pub fn total(&self) -> u64 {
        self.weights.iter().map(|w| *w as u64).sum()
    }

    /// Nothing but sends (the runs before `--mix`).
    pub fn sends_only(&self) -> bool {
        Op::ALL.iter().all(|op| *op == Op::Send || self.weight(*op) == 0)
    }

    /// The operation of a uniform draw `x` in `0..total()`.
    pub fn pick(&self, x: u64) -> Op {
        let mut left = x;
        for op in Op::ALL {
            let w = self.weight(op) as u64;
            if left < w {
                return op;
            }
            left -= w;
        }
        Op::Send
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `send=70,edit=10,react=15,read=5`; a missing operation weighs 0.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights = [0u32; 4];
        let mut seen = [false; 4];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) =
                part.split_once('=').ok_or_else(|| format!("{part:?}: expected OP=WEIGHT (e.g. send=70,edit=10)"))?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.name() == name.trim())
                .ok_or_else(|| format!("{name:?}: not an operation (send, edit, react, read)"))?;
            let weight: u32 =
                weight.trim().parse().map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            if weight > WEIGHT_MAX {
                return Err(format!("{part:?}: a weight is at most {WEIGHT_MAX}"));
            }
            if std::mem::replace(&mut seen[op as usize], true) {
                return Err(format!("{name:?} given twice"));
            }
            weights[op as usize] = weight;
        }
        let mix = Mix { weights };
        if mix.total() == 0 {
            return Err("the weights add up to 0".into());
        }
        Ok(mix)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Op::ALL
            .iter()
            .filter(|op| self.weight(**op) > 0)
            .map(|op| format!("{}={}", op.name(), self.weight(*op)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for Mix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A reaction's `cid`: the two stamps (written, due; ns, 16 hex digits
/// each), the run tag, and the sender's count of operations in hex (unique
/// per user). At most 32 + 12 + 1 + 16 = 61 bytes, within the protocol's 64.
pub fn stamped_cid(sent_ns: u64, due_ns: u64, tag: &str, n: u64) -> String {
    format!("{sent_ns:016x}{due_ns:016x}{tag}-{n:x}")
}

/// (written, due) stamped in a reaction's `cid`.
pub fn cid_stamps_of(cid: &str) -> Option<(u64, u64)> {
    Some((u64::from_str_radix(cid.get(..16)?, 16).ok()?, u64::from_str_radix(cid.get(16..32)?, 16).ok()?))
}

/// A read waiting for its push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingRead {
    pub sent_ns: u64,
    pub due_ns: u64,
    /// It should move the marker, so a push must come.
    pub expected: bool,
}

/// What a `read` push at the second session was.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// The push of this read; `skipped` expected reads of lower seqs will
    /// never be pushed now (the marker is past them).
    Matched { read: PendingRead, skipped: u64 },
    /// A seq pushed already.
    Duplicate,
    /// No read of this seq is waiting (or the seq went backwards).
    Unmatched { skipped: u64 },
}

/// The reads of one user, shared by the session that reads and the
/// user's second session that receives the pushes (both in one process:
/// a room is never split between workers).
#[derive(Default)]
pub struct ReadSync {
    inner: Mutex<ReadsInner>,
    /// Expected pushes not yet received.
    awaiting: AtomicU64,
}

#[derive(Default)]
struct ReadsInner {
    /// By seq: a read's push carries the seq it asked for.
    pending: BTreeMap<u64, PendingRead>,
    highest_pushed: u64,
}

impl ReadSync {
    /// A read of `seq` about to be written. A seq read already and still
    /// waiting keeps its first stamps.
    pub fn register(&self, seq: u64, read: PendingRead) {
        let mut inner = self.inner.lock();
        if seq <= inner.highest_pushed || inner.pending.contains_key(&seq) {
            return;
        }
        if read.expected {
            self.awaiting.fetch_add(1, Ordering::Relaxed);
        }
        inner.pending.insert(seq, read);
    }

    /// A `read{seq}` pushed to the second session.
    pub fn pushed(&self, seq: u64) -> Push {
        let mut inner = self.inner.lock();
        if seq == inner.highest_pushed {
            return Push::Duplicate;
        }
        if seq < inner.highest_pushed {
            return Push::Unmatched { skipped: 0 };
        }
        inner.highest_pushed = seq;
        let later = inner.pending.split_off(&seq);
        let below = std::mem::replace(&mut inner.pending, later);
        let skipped = below.values().filter(|r| r.expected).count() as u64;
        let matched = inner.pending.remove(&seq);
        let done = skipped + matched.map_or(0, |r| r.expected as u64);
        self.awaiting.fetch_sub(done, Ordering::Relaxed);
        match matched {
            Some(read) => Push::Matched { read, skipped },
            None => Push::Unmatched { skipped },
        }
    }

    /// Expected pushes still missing.
    pub fn awaiting(&self) -> u64 {
        self.awaiting.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_weights() {
        let m: Mix = "send=70,edit=10,react=15,read=5".parse().unwrap();
        assert_eq!((m.weight(Op::Send), m.weight(Op::Edit), m.weight(Op::React), m.weight(Op::Read)), (70, 10, 15, 5));
        assert_eq!(m.total(), 100);
        assert!(!m.sends_only());
        assert_eq!(m.to_string(), "send=70,edit=10,react=15,read=5");
        let only: Mix = " edit = 3 ".parse().unwrap();
        assert_eq!((only.weight(Op::Send), only.weight(Op::Edit)), (0, 3));
        assert!(Mix::default().sends_only() && "send=5".parse::<Mix>().unwrap().sends_only());
        for bad in ["", "send=0", "send", "poke=1", "send=1,send=2", "send=-1", "send=1.5", "send=2000000"] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?}");
        }
        assert_eq!(serde_json::to_value(m).unwrap(), "send=70,edit=10,react=15,read=5");
    }

    #[test]
    fn picks_by_weight() {
        let m: Mix = "send=2,edit=1,read=1".parse().unwrap();
        let picked: Vec<Op> = (0..m.total()).map(|x| m.pick(x)).collect();
        assert_eq!(picked, vec![Op::Send, Op::Send, Op::Edit, Op::Read]);
    }

    #[test]
    fn counter_names_keep_a_sends_old_names() {
        assert_eq!(Op::Send.counter(OpK::Performed), "sends");
        assert_eq!(Op::Send.counter(OpK::Answered), "acks");
        assert_eq!(Op::Send.counter(OpK::Lost), "send_lost");
        assert_eq!(Op::React.counter(OpK::Due), "react_due_in_window");
        assert_eq!(Op::Read.counter(OpK::PushesLost), "read_pushes_lost");
        assert_eq!(Op::Send.hist(Metric::Deliver), h::LATENCY);
        assert_eq!(Op::Read.hist(Metric::Ack), h::READ_OK);
    }

    #[test]
    fn cid_stamps_round_trip() {
        let cid = stamped_cid(u64::MAX, 12345, "abcdefghijkl", u64::MAX);
        assert!(cid.len() <= viche_protocol::limits::CID_BYTES_MAX, "{}", cid.len());
        assert_eq!(cid_stamps_of(&cid), Some((u64::MAX, 12345)));
        assert_eq!(cid_stamps_of("lt1-4"), None);
    }

    #[test]
    fn pushes_match_reads_in_order() {
        let s = ReadSync::default();
        let r = |expected| PendingRead { sent_ns: 1, due_ns: 1, expected };
        s.register(5, r(true));
        s.register(7, r(false));
        s.register(9, r(true));
        s.register(12, r(true));
        assert_eq!(s.awaiting(), 3);
        assert_eq!(s.pushed(5), Push::Matched { read: r(true), skipped: 0 });
        assert_eq!(s.pushed(5), Push::Duplicate);
        // 7 did not move the marker after all; 9 never pushed: skipped by 12.
        assert_eq!(s.pushed(12), Push::Matched { read: r(true), skipped: 1 });
        assert_eq!(s.awaiting(), 0);
        assert_eq!(s.pushed(10), Push::Unmatched { skipped: 0 });
        // Seqs at or below the highest pushed can no longer push.
        s.register(11, r(true));
        assert_eq!(s.awaiting(), 0);
        assert_eq!(s.pushed(20), Push::Unmatched { skipped: 0 });
    }
}
