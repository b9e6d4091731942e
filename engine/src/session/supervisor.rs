//! `SessionSupervisor`: the ractor actor that observes every session's
//! exit, under the engine supervisor.
//!
//! A session is not an actor of its own: an idle session must cost at most
//! 8 KiB of server memory, and a ractor actor alone costs about that. It
//! has an actor's semantics instead: one owner of its state (its
//! connection's task), its outbox as its bounded mailbox, and lifecycle
//! events, which reach this supervisor when the session ends (from
//! `Drop for Session`, so no exit is missed, a panic included).
//!
//! Policy: a session is never restarted by the server. When one panics,
//! its connection is closed with 1011 (the gateway does that), its rooms,
//! presence and directory entry are cleaned by its `Drop`, its connection
//! slot is given back, and the failure is counted here; its client
//! reconnects and resumes with `since`. There is no escalation: a client
//! that can make its own session panic must not be able to stop the server.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::metrics::ACTOR_FAILURES;

pub(crate) struct SessionSupervisor;

pub(crate) enum SessionEvent {
    /// A session ended; `panicked` when it ended by a panic.
    Exited { user: std::sync::Arc<str>, session: u64, panicked: bool },
}

pub(crate) struct SessionSupervisorState {
    exited: u64,
    panicked: u64,
}

impl Actor for SessionSupervisor {
    type Msg = SessionEvent;
    type State = SessionSupervisorState;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<SessionEvent>, _: ()) -> Result<SessionSupervisorState, ActorProcessingErr> {
        Ok(SessionSupervisorState { exited: 0, panicked: 0 })
    }

    async fn handle(
        &self,
        _: ActorRef<SessionEvent>,
        event: SessionEvent,
        state: &mut SessionSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SessionEvent::Exited { user, session, panicked } => {
                state.exited += 1;
                if panicked {
                    state.panicked += 1;
                    ACTOR_FAILURES.counter_with("session").increment(1);
                    tracing::error!(%user, session, panicked_total = state.panicked, "a session panicked; its connection is closed with 1011");
                }
            }
        }
        Ok(())
    }
}
