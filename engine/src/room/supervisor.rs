//! `RoomSupervisor`: spawns a room's actor on first use, restarts one that
//! crashed (its handle, and so its members, survive), and stops rooms that
//! are empty and idle. [`Rooms`] is how the rest of the engine asks it for
//! a room.
//!
//! ractor's default `handle_supervisor_evt` stops the supervisor when any
//! child exits; this one overrides it, so one room's crash touches no other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use viche_protocol::ErrorCode;

use super::actor::{RoomActor, RoomArgs, RoomMsg};
use super::handle::RoomHandle;
use super::RoomKindOwned;
use crate::delivery::Directory;
use crate::metrics::{ROOMS_ACTIVE, ROOM_RESTARTS};
use crate::refusal::Refusal;
use crate::store::Store;

/// How long a session waits for the supervisor to hand it a room.
const ROOM_LOOKUP_TIMEOUT_MS: u64 = 10_000;

/// The engine's way to the room supervisor.
#[derive(Clone)]
pub(crate) struct Rooms {
    supervisor: ActorRef<SupervisorMsg>,
}

impl Rooms {
    pub(crate) async fn start(args: SupervisorArgs) -> anyhow::Result<Self> {
        let (supervisor, _) =
            Actor::spawn(None, RoomSupervisor, args).await.map_err(|e| anyhow::anyhow!("room supervisor: {e}"))?;
        Ok(Self { supervisor })
    }

    /// The live handle of a room (spawned on first use).
    pub(crate) async fn get(&self, name: &str) -> Result<Arc<RoomHandle>, Refusal> {
        let result = ractor::call_t!(self.supervisor, SupervisorMsg::GetOrSpawn, ROOM_LOOKUP_TIMEOUT_MS, name.into());
        match result {
            Ok(Ok(handle)) => Ok(handle),
            Ok(Err(ErrorCode::NotFound)) => Err(Refusal::new(ErrorCode::NotFound, "no such user")),
            Ok(Err(code)) => Err(Refusal::new(code, "room unavailable")),
            Err(e) => {
                tracing::error!(error = %e, room = name, "room supervisor did not answer");
                Err(Refusal::new(ErrorCode::Overloaded, "room unavailable; retry"))
            }
        }
    }
}

pub(crate) enum SupervisorMsg {
    /// The live handle of a room, spawning its actor if needed.
    /// `not_found` for a DM room of a user that does not exist.
    GetOrSpawn(Arc<str>, RpcReplyPort<Result<Arc<RoomHandle>, ErrorCode>>),
    /// Periodic: stop rooms that are empty and idle.
    Sweep,
}

pub(crate) struct RoomSupervisor;

pub(crate) struct SupervisorArgs {
    pub store: Arc<dyn Store>,
    pub directory: Arc<Directory>,
    pub room_idle_ms: u64,
    pub rooms_max: usize,
}

pub(crate) struct SupervisorState {
    args: SupervisorArgs,
    rooms: HashMap<Arc<str>, Arc<RoomHandle>>,
    by_actor: HashMap<ActorId, Arc<str>>,
}

impl SupervisorState {
    async fn spawn_room(&mut self, myself: &ActorRef<SupervisorMsg>, handle: Arc<RoomHandle>) -> Result<(), ErrorCode> {
        let args =
            RoomArgs { handle: handle.clone(), store: self.args.store.clone(), directory: self.args.directory.clone() };
        match Actor::spawn_linked(None, RoomActor, args, myself.get_cell()).await {
            Ok((actor, _join)) => {
                self.by_actor.insert(actor.get_id(), handle.name.clone());
                *handle.actor.lock() = Some(actor);
                Ok(())
            }
            Err(e) => {
                let text = e.to_string();
                if matches!(handle.kind, RoomKindOwned::Dm(..)) && text.contains("no such user") {
                    Err(ErrorCode::NotFound)
                } else {
                    tracing::error!(room = %handle.name, error = %text, "room failed to start");
                    Err(ErrorCode::Internal)
                }
            }
        }
    }
}

impl Actor for RoomSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let sweep_every = Duration::from_millis((args.room_idle_ms / 2).max(10));
        myself.send_interval(sweep_every, || SupervisorMsg::Sweep);
        Ok(SupervisorState { args, rooms: HashMap::new(), by_actor: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::GetOrSpawn(name, reply) => {
                if let Some(handle) = state.rooms.get(&name) {
                    let _ = reply.send(Ok(handle.clone()));
                    return Ok(());
                }
                if state.rooms.len() >= state.args.rooms_max {
                    let _ = reply.send(Err(ErrorCode::Overloaded));
                    return Ok(());
                }
                let Some(handle) = RoomHandle::new(name.clone()).map(Arc::new) else {
                    let _ = reply.send(Err(ErrorCode::Invalid));
                    return Ok(());
                };
                let result = state.spawn_room(&myself, handle.clone()).await;
                if result.is_ok() {
                    state.rooms.insert(name, handle.clone());
                }
                let _ = reply.send(result.map(|()| handle));
            }
            SupervisorMsg::Sweep => {
                let idle_after = Duration::from_millis(state.args.room_idle_ms);
                state.rooms.retain(|_, handle| {
                    let mut state = handle.state.lock();
                    let idle =
                        state.members.is_empty() && state.in_flight == 0 && state.last_activity.elapsed() >= idle_after;
                    if idle {
                        state.closed = true;
                        if let Some(actor) = handle.actor.lock().as_ref() {
                            let _ = actor.send_message(RoomMsg::Stop);
                        }
                    }
                    !idle
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(name) = state.by_actor.remove(&cell.get_id()) else { return Ok(()) };
                let Some(handle) = state.rooms.get(&name).cloned() else { return Ok(()) };
                ROOM_RESTARTS.counter().increment(1);
                ROOMS_ACTIVE.gauge().decrement(1.0);
                tracing::error!(room = %name, error = %err, "room actor crashed; restarting");
                *handle.actor.lock() = None;
                if state.spawn_room(&myself, handle.clone()).await.is_err() {
                    // Cannot restart (the store is down): close the handle so
                    // that sessions fetch a fresh room on their next request.
                    handle.state.lock().closed = true;
                    state.rooms.remove(&name);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.by_actor.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}
