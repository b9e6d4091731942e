//! The counters, histograms and timeline of a running process, shared by
//! all its connection tasks; [`Live::snapshot`] turns them into a
//! [`Raw`] report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::hist::Hist;
use crate::mix::{Metric, Op, OpK};
use crate::report::{c, Raw, TimelinePoint};

/// The counters, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum K {
    ConnectionsTarget,
    ConnectionsOpened,
    ConnectFailures,
    SendsDue,
    Sends,
    SendsInWindow,
    Acks,
    SendErrors,
    SendsUnanswered,
    Deliveries,
    DeliveriesInWindow,
    Expected,
    Lost,
    Duplicates,
    Gaps,
    Replayed,
    ReplayMore,
    OtherFrames,
    Drops,
    UnplannedCloses,
    Reconnects,
    ReconnectFailures,
    MembersLost,
    Registrations,
    Logins,
    HttpFailures,
    GeneratorCpuUs,
    RegisterPhaseUs,
    LoginPhaseUs,
    HistoryPagesWs,
    HistoryPagesHttp,
}

impl K {
    pub const ALL: [K; 31] = [
        K::ConnectionsTarget,
        K::ConnectionsOpened,
        K::ConnectFailures,
        K::SendsDue,
        K::Sends,
        K::SendsInWindow,
        K::Acks,
        K::SendErrors,
        K::SendsUnanswered,
        K::Deliveries,
        K::DeliveriesInWindow,
        K::Expected,
        K::Lost,
        K::Duplicates,
        K::Gaps,
        K::Replayed,
        K::ReplayMore,
        K::OtherFrames,
        K::Drops,
        K::UnplannedCloses,
        K::Reconnects,
        K::ReconnectFailures,
        K::MembersLost,
        K::Registrations,
        K::Logins,
        K::HttpFailures,
        K::GeneratorCpuUs,
        K::RegisterPhaseUs,
        K::LoginPhaseUs,
        K::HistoryPagesWs,
        K::HistoryPagesHttp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            K::ConnectionsTarget => c::CONNECTIONS_TARGET,
            K::ConnectionsOpened => c::CONNECTIONS_OPENED,
            K::ConnectFailures => c::CONNECT_FAILURES,
            K::SendsDue => c::SENDS_DUE,
            K::Sends => c::SENDS,
            K::SendsInWindow => c::SENDS_IN_WINDOW,
            K::Acks => c::ACKS,
            K::SendErrors => c::SEND_ERRORS,
            K::SendsUnanswered => c::SENDS_UNANSWERED,
            K::Deliveries => c::DELIVERIES,
            K::DeliveriesInWindow => c::DELIVERIES_IN_WINDOW,
            K::Expected => c::EXPECTED,
            K::Lost => c::LOST,
            K::Duplicates => c::DUPLICATES,
            K::Gaps => c::GAPS,
            K::Replayed => c::REPLAYED,
            K::ReplayMore => c::REPLAY_MORE,
            K::OtherFrames => c::OTHER_FRAMES,
            K::Drops => c::DROPS,
            K::UnplannedCloses => c::UNPLANNED_CLOSES,
            K::Reconnects => c::RECONNECTS,
            K::ReconnectFailures => c::RECONNECT_FAILURES,
            K::MembersLost => c::MEMBERS_LOST,
            K::Registrations => c::REGISTRATIONS,
            K::Logins => c::LOGINS,
            K::HttpFailures => c::HTTP_FAILURES,
            K::GeneratorCpuUs => c::GENERATOR_CPU_US,
            K::RegisterPhaseUs => c::REGISTER_PHASE_US,
            K::LoginPhaseUs => c::LOGIN_PHASE_US,
            K::HistoryPagesWs => c::HISTORY_PAGES_WS,
            K::HistoryPagesHttp => c::HISTORY_PAGES_HTTP,
        }
    }
}

/// The [`K`] counter of a send's `k`, where there is one.
pub(crate) fn legacy(op: Op, k: OpK) -> Option<K> {
    match (op, k) {
        (Op::Send, OpK::Due) => Some(K::SendsDue),
        (Op::Send, OpK::Performed) => Some(K::Sends),
        (Op::Send, OpK::InWindow) => Some(K::SendsInWindow),
        (Op::Send, OpK::Answered) => Some(K::Acks),
        (Op::Send, OpK::Errors) => Some(K::SendErrors),
        (Op::Send, OpK::Unanswered) => Some(K::SendsUnanswered),
        _ => None,
    }
}

#[derive(Default)]
struct Hists {
    by_name: BTreeMap<&'static str, Hist>,
    /// Send→deliver of every live delivery since the last timeline tick.
    second: Hist,
}

/// A process's live figures.
pub struct Live {
    counts: Vec<AtomicU64>,
    /// The counters of each operation ([`Op`] × [`OpK`]) that have no [`K`].
    op_counts: Vec<AtomicU64>,
    /// Error frames counted (all codes), for the timeline.
    errors_total: AtomicU64,
    hists: Mutex<Hists>,
    errors: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    timeline: Mutex<Vec<TimelinePoint>>,
    /// Counts at the last tick: sends, deliveries, errors.
    last_tick: Mutex<(u64, u64, u64)>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            counts: K::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            op_counts: (0..Op::ALL.len() * OpK::ALL.len()).map(|_| AtomicU64::new(0)).collect(),
            errors_total: AtomicU64::new(0),
            hists: Mutex::new(Hists::default()),
            errors: Mutex::new(BTreeMap::new()),
            closes: Mutex::new(BTreeMap::new()),
            timeline: Mutex::new(Vec::new()),
            last_tick: Mutex::new((0, 0, 0)),
        }
    }
}

impl Live {
    pub fn inc(&self, k: K) {
        self.counts[k as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, k: K, n: u64) {
        self.counts[k as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, k: K) -> u64 {
        self.counts[k as usize].load(Ordering::Relaxed)
    }

    /// Adds `n` to the counter `k` of `op` (a send's answers and rates are
    /// the [`K`] counters they always were).
    pub fn op_add(&self, op: Op, k: OpK, n: u64) {
        match legacy(op, k) {
            Some(k) => self.add(k, n),
            None => {
                self.op_counts[op as usize * OpK::ALL.len() + k as usize].fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    pub fn op_inc(&self, op: Op, k: OpK) {
        self.op_add(op, k, 1);
    }

    pub fn op_get(&self, op: Op, k: OpK) -> u64 {
        match legacy(op, k) {
            Some(k) => self.get(k),
            None => self.op_counts[op as usize * OpK::ALL.len() + k as usize].load(Ordering::Relaxed),
        }
    }

    /// A live delivery of an operation's `msg`: a message's goes to
    /// [`Live::record_delivery`]; an edit's or reaction's, due in the
    /// window, to its own histograms.
    pub fn record_op_delivery(&self, op: Op, ns: u64, from_due_ns: u64, in_window: bool) {
        if op == Op::Send {
            return self.record_delivery(ns, from_due_ns, in_window);
        }
        if in_window {
            let mut h = self.hists.lock();
            h.by_name.entry(op.hist(Metric::Deliver)).or_default().record(ns);
            h.by_name.entry(op.hist(Metric::DeliverFromDue)).or_default().record(from_due_ns);
        }
    }

    /// Records `ns` into the histogram `name`.
    pub fn record(&self, name: &'static str, ns: u64) {
        self.hists.lock().by_name.entry(name).or_default().record(ns);
    }

    /// A live delivery's send→deliver (`ns`, from the send's write) into
    /// the current second, and, when the send was due in the window, into
    /// the `latency` histogram, with `from_due_ns` (from when it was due)
    /// into `latency_from_due`.
    pub fn record_delivery(&self, ns: u64, from_due_ns: u64, in_window: bool) {
        let mut h = self.hists.lock();
        h.second.record(ns);
        if in_window {
            h.by_name.entry(crate::report::h::LATENCY).or_default().record(ns);
            h.by_name.entry(crate::report::h::LATENCY_FROM_DUE).or_default().record(from_due_ns);
        }
    }

    /// Makes sure a histogram is present in the report even when empty.
    pub fn declare(&self, name: &'static str) {
        self.hists.lock().by_name.entry(name).or_default();
    }

    pub fn error(&self, code: &str) {
        self.errors_total.fetch_add(1, Ordering::Relaxed);
        *self.errors.lock().entry(code.to_string()).or_default() += 1;
    }

    pub fn close(&self, code: Option<u16>) {
        let key = code.map_or("none".to_string(), |c| c.to_string());
        *self.closes.lock().entry(key).or_default() += 1;
    }

    /// Closes the current second of the timeline as second `t`; returns
    /// the point (also kept for the report).
    pub fn tick(&self, t: u64) -> TimelinePoint {
        let second = std::mem::take(&mut self.hists.lock().second);
        let (sends, deliveries, errors) =
            (self.get(K::Sends), self.get(K::Deliveries), self.errors_total.load(Ordering::Relaxed));
        let mut last = self.last_tick.lock();
        let point = TimelinePoint {
            t,
            sends: sends - last.0,
            deliveries: deliveries - last.1,
            errors: errors - last.2,
            latency: second,
        };
        *last = (sends, deliveries, errors);
        self.timeline.lock().push(point.clone());
        point
    }

    /// Everything counted so far.
    pub fn snapshot(&self) -> Raw {
        let mut raw = Raw { processes: 1, ..Raw::default() };
        for k in K::ALL {
            let v = self.get(k);
            if v > 0 {
                raw.counters.insert(k.name().to_string(), v);
            }
        }
        for op in Op::ALL {
            for k in OpK::ALL {
                let v = self.op_get(op, k);
                if v > 0 && legacy(op, k).is_none() {
                    raw.counters.insert(op.counter(k), v);
                }
            }
        }
        raw.errors_by_code = self.errors.lock().clone();
        raw.closes_by_code = self.closes.lock().clone();
        raw.histograms = self.hists.lock().by_name.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        raw.timeline = self.timeline.lock().clone();
        raw
    }
}
