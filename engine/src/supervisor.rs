//! The root of the supervision tree: the engine supervisor, and the
//! restart intensity limit every supervisor here applies.
//!
//! ```text
//! EngineSupervisor                    engine/src/supervisor.rs
//!  ├─ WriterActor                     engine/src/writer/actor.rs
//!  ├─ RoomSupervisor                  engine/src/room/supervisor.rs
//!  │    └─ RoomActor (one per room)   engine/src/room/actor.rs
//!  └─ SessionSupervisor               engine/src/session/supervisor.rs
//!       └─ sessions (one per connection, observed)
//! ```
//!
//! Policies (docs/architecture.md, "Supervision", says why):
//! - The writer is restarted after a failure, after a short backoff; the
//!   batch it was committing is committed again by its successor. Past
//!   [`WRITER_RESTARTS_MAX`] failures within [`RESTART_WINDOW_MS`], the
//!   engine gives up: it stays not ready and the process exits non-zero.
//! - The room supervisor and the session supervisor hold registries and do
//!   no I/O; a failure of either is a bug that leaves the engine unable to
//!   find rooms or count sessions, so the engine gives up at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::health::Health;
use crate::metrics::{ACTOR_FAILURES, ACTOR_RESTARTS};
use crate::writer::{WriterActor, WriterShared};

/// The window over which restarts are counted.
pub(crate) const RESTART_WINDOW_MS: u64 = 60_000;
/// Writer failures within the window the engine survives.
pub(crate) const WRITER_RESTARTS_MAX: usize = 10;
/// Wait before restarting the writer: the n-th failure in the window
/// waits n times this (a crash loop slows down instead of spinning).
const WRITER_RESTART_BACKOFF_MS: u64 = 100;

/// Failures within a sliding window; `record` says whether the limit is passed.
pub(crate) struct RestartIntensity {
    max: usize,
    window: Duration,
    failures: VecDeque<Instant>,
}

impl RestartIntensity {
    pub(crate) fn new(max: usize, window_ms: u64) -> Self {
        assert!(max > 0 && window_ms > 0);
        Self { max, window: Duration::from_millis(window_ms), failures: VecDeque::with_capacity(max + 1) }
    }

    /// Records a failure now; returns how many are in the window, and
    /// whether that passes the limit.
    pub(crate) fn record(&mut self, now: Instant) -> (usize, bool) {
        while self.failures.front().is_some_and(|&t| now.duration_since(t) > self.window) {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        if self.failures.len() > self.max + 1 {
            self.failures.pop_front();
        }
        (self.failures.len(), self.failures.len() > self.max)
    }
}

pub(crate) struct EngineSupervisor;

pub(crate) enum EngineMsg {
    RestartWriter,
}

pub(crate) struct EngineSupervisorArgs {
    pub writer: Arc<WriterShared>,
    pub health: Arc<Health>,
}

pub(crate) struct EngineSupervisorState {
    args: EngineSupervisorArgs,
    writer: Option<ActorCell>,
    writer_failures: RestartIntensity,
}

impl EngineSupervisorState {
    async fn start_writer(&mut self, myself: &ActorRef<EngineMsg>) -> Result<(), ActorProcessingErr> {
        let (writer, _) = Actor::spawn_linked(None, WriterActor, self.args.writer.clone(), myself.get_cell()).await?;
        self.writer = Some(writer.get_cell());
        Ok(())
    }
}

impl Actor for EngineSupervisor {
    type Msg = EngineMsg;
    type State = EngineSupervisorState;
    type Arguments = EngineSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<EngineMsg>,
        args: EngineSupervisorArgs,
    ) -> Result<EngineSupervisorState, ActorProcessingErr> {
        let mut state = EngineSupervisorState {
            args,
            writer: None,
            writer_failures: RestartIntensity::new(WRITER_RESTARTS_MAX, RESTART_WINDOW_MS),
        };
        state.start_writer(&myself).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<EngineMsg>,
        msg: EngineMsg,
        state: &mut EngineSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EngineMsg::RestartWriter => {
                if let Err(e) = state.start_writer(&myself).await {
                    state.args.health.fail(format!("the writer could not be restarted: {e}"));
                    return Ok(());
                }
                ACTOR_RESTARTS.counter_with("writer").increment(1);
                tracing::warn!("writer restarted");
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<EngineMsg>,
        event: SupervisionEvent,
        state: &mut EngineSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let health = &state.args.health;
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                if state.writer.as_ref().is_some_and(|w| w.get_id() == cell.get_id()) {
                    state.writer = None;
                    health.set_writer_up(false);
                    ACTOR_FAILURES.counter_with("writer").increment(1);
                    let (recent, past_limit) = state.writer_failures.record(Instant::now());
                    tracing::error!(error = %error, recent, "the writer failed");
                    if past_limit {
                        health.fail(format!("the writer failed {recent} times within {RESTART_WINDOW_MS} ms"));
                    } else {
                        let wait = Duration::from_millis(WRITER_RESTART_BACKOFF_MS * recent as u64);
                        myself.send_after(wait, || EngineMsg::RestartWriter);
                    }
                } else {
                    health.fail(format!("a supervisor failed: {error}"));
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if state.writer.as_ref().is_some_and(|w| w.get_id() == cell.get_id()) {
                    // Only at shutdown: every sender is gone.
                    state.writer = None;
                    health.set_writer_up(false);
                } else {
                    health.fail(format!("a supervisor stopped: {reason:?}"));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intensity_counts_failures_within_the_window_only() {
        let mut limit = RestartIntensity::new(2, 1_000);
        let t0 = Instant::now();
        assert_eq!(limit.record(t0), (1, false));
        assert_eq!(limit.record(t0 + Duration::from_millis(10)), (2, false));
        assert_eq!(limit.record(t0 + Duration::from_millis(20)), (3, true), "the third within a second passes 2");
        let later = t0 + Duration::from_millis(1_015);
        assert_eq!(limit.record(later), (2, false), "the first two left the window; the third and this one remain");
    }
}
