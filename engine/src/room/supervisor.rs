//! `RoomSupervisor`: spawns a room's actor on first use, restarts one that
//! crashed (its handle, and so its members and queued operations,
//! survive), and stops rooms that are empty and idle. [`Rooms`] is how the
//! rest of the engine finds a room.
//!
//! The registry of open rooms is a map that [`Rooms::get`] reads directly:
//! finding an open room never waits for the supervisor. Only a room that is
//! not open yet goes through the supervisor, whose work is quick and does
//! no I/O: the caller, in its own task, reads the room's last seq (and
//! checks a DM room's users) before it asks. No write to the room can come
//! between that read and the room's opening: writes need its handle.
//!
//! ractor's default `handle_supervisor_evt` stops the supervisor when any
//! child exits; this one overrides it, so one room's crash touches no
//! other. A room that crashes is restarted after a backoff that grows with
//! its recent crashes ([`ROOM_RESTART_BACKOFF_MAX_MS`] at most), so a room
//! in a crash loop costs little and shows in `viche_actor_failures_total`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use viche_protocol::ErrorCode;

use super::actor::{RoomActor, RoomArgs, RoomMsg};
use super::handle::RoomHandle;
use super::RoomKindOwned;
use crate::cluster::Cluster;
use crate::delivery::Directory;
use crate::metrics::{ACTOR_FAILURES, ACTOR_RESTARTS, ROOMS_ACTIVE};
use crate::refusal::Refusal;
use crate::store::Store;
use crate::supervisor::{RestartIntensity, RESTART_WINDOW_MS};

/// How long a session waits for the supervisor to open a room.
const ROOM_OPEN_TIMEOUT_MS: u64 = 10_000;
/// Wait before restarting a crashed room: this times its crashes within
/// the restart window, at most [`ROOM_RESTART_BACKOFF_MAX_MS`].
const ROOM_RESTART_BACKOFF_MS: u64 = 100;
const ROOM_RESTART_BACKOFF_MAX_MS: u64 = 5_000;
/// Crashes per room remembered for the backoff.
const ROOM_CRASHES_COUNTED_MAX: usize = 64;

type Registry = RwLock<HashMap<Arc<str>, Arc<RoomHandle>>>;

/// The engine's way to its rooms.
#[derive(Clone)]
pub(crate) struct Rooms {
    registry: Arc<Registry>,
    supervisor: ActorRef<SupervisorMsg>,
    store: Arc<dyn Store>,
    directory: Arc<Directory>,
    cluster: Option<Arc<Cluster>>,
}

impl Rooms {
    pub(crate) async fn start(args: SupervisorArgs, parent: ractor::ActorCell) -> anyhow::Result<Self> {
        let registry: Arc<Registry> = Arc::default();
        let store = args.store.clone();
        let cluster = args.cluster.clone();
        let directory = args.directory.clone();
        let state_args = (args, registry.clone());
        let (supervisor, _) = Actor::spawn_linked(None, RoomSupervisor, state_args, parent)
            .await
            .map_err(|e| anyhow::anyhow!("room supervisor: {e}"))?;
        Ok(Self { registry, supervisor, store, directory, cluster })
    }

    /// Rooms open now (stopped idle rooms excluded).
    pub(crate) fn open_count(&self) -> usize {
        self.registry.read().values().filter(|h| !h.is_closed()).count()
    }

    /// The live handle of a room, opened on first use. A DM room opens only
    /// if both its users exist (`not_found` otherwise).
    pub(crate) async fn get(&self, name: &str) -> Result<Arc<RoomHandle>, Refusal> {
        if let Some(handle) = self.open_now(name) {
            return Ok(handle);
        }
        self.open(name).await
    }

    /// The public rooms open now.
    pub(crate) fn open_public(&self) -> Vec<Arc<RoomHandle>> {
        let registry = self.registry.read();
        registry.values().filter(|h| h.kind == RoomKindOwned::Public && !h.is_closed()).cloned().collect()
    }

    /// How many open rooms `keep` says yes to.
    pub(crate) fn count_open(&self, keep: impl Fn(&str) -> bool) -> usize {
        self.registry.read().values().filter(|h| !h.is_closed() && keep(&h.name)).count()
    }

    /// The room, if it is open now.
    pub(crate) fn open_now(&self, name: &str) -> Option<Arc<RoomHandle>> {
        self.registry.read().get(name).filter(|h| !h.is_closed()).cloned()
    }

    async fn open(&self, name: &str) -> Result<Arc<RoomHandle>, Refusal> {
        let Some(handle) = RoomHandle::new(name.into()) else {
            return Err(Refusal::new(ErrorCode::Invalid, format!("invalid room id {name:?}")));
        };
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, room = name, "cannot open a room: the store does not answer");
            Refusal::new(ErrorCode::Overloaded, "room unavailable; retry")
        };
        if let RoomKindOwned::Dm(a, b) = &handle.kind {
            for user in [a, b] {
                match self.store.get_user(user).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(Refusal::new(ErrorCode::NotFound, "no such user")),
                    Err(e) => return Err(unavailable(&e)),
                }
            }
        }
        // In a cluster, subscribe before reading the last seq: whatever is
        // stored after the read then arrives on the subscription. (A DM
        // room's messages travel on its users' subjects instead, which
        // every node with a session of either user follows.)
        let subscription = match &self.cluster {
            Some(cluster) if handle.kind == RoomKindOwned::Public => {
                match cluster.subscribe(cluster.relay.room_subject(name)).await {
                    Ok(subscription) => Some(subscription),
                    Err(e) => {
                        tracing::warn!(error = %e, room = name, "cannot open a room: NATS does not answer");
                        return Err(Refusal::new(ErrorCode::Overloaded, "the cluster is unavailable; retry"));
                    }
                }
            }
            _ => None,
        };
        match self.store.last_seq(name).await {
            Ok(last) => handle.state.lock().last_published = last,
            Err(e) => return Err(unavailable(&e)),
        }
        if let (Some(_), RoomKindOwned::Dm(a, b)) = (&self.cluster, &handle.kind) {
            // Other nodes may have stored (and relayed) messages of this DM
            // since its users' sessions here opened, which no room here
            // delivered: they are replayed first. The room then stays open
            // while either user has a session here (the sweep), so this
            // happens once per stay.
            let since = [a, b].into_iter().filter_map(|u| self.directory.present_since(u)).min();
            if let Some(since_ms) = since {
                handle.replay_recent(since_ms.saturating_sub(crate::cluster::CLOCK_SKEW_MS));
            }
        }
        let fresh = Arc::new(handle);
        let result = ractor::call_t!(self.supervisor, SupervisorMsg::Open, ROOM_OPEN_TIMEOUT_MS, fresh.clone());
        match result {
            Ok(Ok(handle)) => {
                // Another opener's handle won: it follows its own subscription.
                if let Some(subscription) = subscription.filter(|_| Arc::ptr_eq(&handle, &fresh)) {
                    handle.follow(subscription);
                    // Who is in the room on the other nodes: they answer
                    // with their rosters.
                    if let Some(cluster) = &self.cluster {
                        cluster.relay.hello(name);
                    }
                }
                Ok(handle)
            }
            Ok(Err(code)) => Err(Refusal::new(code, "room unavailable")),
            Err(e) => {
                tracing::error!(error = %e, room = name, "room supervisor did not answer");
                Err(Refusal::new(ErrorCode::Overloaded, "room unavailable; retry"))
            }
        }
    }
}

pub(crate) enum SupervisorMsg {
    /// Opens this room (a fresh handle) unless it is open already; answers
    /// the open handle.
    Open(Arc<RoomHandle>, RpcReplyPort<Result<Arc<RoomHandle>, ErrorCode>>),
    /// Starts a new actor for a room whose actor crashed.
    Restart(Arc<str>),
    /// Periodic: stop rooms that are empty and idle.
    Sweep,
}

pub(crate) struct RoomSupervisor;

pub(crate) struct SupervisorArgs {
    pub store: Arc<dyn Store>,
    pub directory: Arc<Directory>,
    /// In a cluster: rooms follow their subject, and relay typing.
    pub cluster: Option<Arc<Cluster>>,
    pub room_idle_ms: u64,
    pub rooms_max: usize,
}

pub(crate) struct SupervisorState {
    args: SupervisorArgs,
    registry: Arc<Registry>,
    by_actor: HashMap<ActorId, Arc<str>>,
    crashes: HashMap<Arc<str>, RestartIntensity>,
}

impl SupervisorState {
    async fn spawn_room(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        handle: Arc<RoomHandle>,
        restart: bool,
    ) -> Result<(), ErrorCode> {
        let args = RoomArgs {
            handle: handle.clone(),
            store: self.args.store.clone(),
            directory: self.args.directory.clone(),
            relay: self.args.cluster.as_ref().map(|c| c.relay.clone()),
            restart,
        };
        match Actor::spawn_linked(None, RoomActor, args, myself.get_cell()).await {
            Ok((actor, _join)) => {
                self.by_actor.insert(actor.get_id(), handle.name.clone());
                *handle.actor.lock() = Some(actor);
                Ok(())
            }
            Err(e) => {
                tracing::error!(room = %handle.name, error = %e, "room failed to start");
                Err(ErrorCode::Internal)
            }
        }
    }
}

impl Actor for RoomSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (SupervisorArgs, Arc<Registry>);

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        (args, registry): (SupervisorArgs, Arc<Registry>),
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let sweep_every = Duration::from_millis((args.room_idle_ms / 2).max(10));
        myself.send_interval(sweep_every, || SupervisorMsg::Sweep);
        Ok(SupervisorState { args, registry, by_actor: HashMap::new(), crashes: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Open(fresh, reply) => {
                if let Some(open) = state.registry.read().get(&fresh.name).filter(|h| !h.is_closed()) {
                    let _ = reply.send(Ok(open.clone()));
                    return Ok(());
                }
                let open_rooms = state.registry.read().len();
                if open_rooms >= state.args.rooms_max {
                    let _ = reply.send(Err(ErrorCode::Overloaded));
                    return Ok(());
                }
                let result = state.spawn_room(&myself, fresh.clone(), false).await;
                if result.is_ok() {
                    state.registry.write().insert(fresh.name.clone(), fresh.clone());
                }
                let _ = reply.send(result.map(|()| fresh));
            }
            SupervisorMsg::Restart(name) => {
                let Some(handle) = state.registry.read().get(&name).cloned() else { return Ok(()) };
                if handle.is_closed() {
                    return Ok(());
                }
                if state.spawn_room(&myself, handle.clone(), true).await.is_ok() {
                    ACTOR_RESTARTS.counter_with("room").increment(1);
                } else {
                    myself.send_after(Duration::from_millis(ROOM_RESTART_BACKOFF_MAX_MS), move || {
                        SupervisorMsg::Restart(name)
                    });
                }
            }
            SupervisorMsg::Sweep => {
                let idle_after = Duration::from_millis(state.args.room_idle_ms);
                // In a cluster a DM room stays open while either of its
                // users has a session here (see `Rooms::open`).
                let clustered = state.args.cluster.is_some();
                let directory = state.args.directory.clone();
                let dm_users_present = |kind: &RoomKindOwned| match kind {
                    RoomKindOwned::Dm(a, b) => {
                        directory.present_since(a).is_some() || directory.present_since(b).is_some()
                    }
                    RoomKindOwned::Public => false,
                };
                state.registry.write().retain(|_, handle| {
                    let mut room = handle.state.lock();
                    if room.closed {
                        return false; // gave up; its actor has stopped
                    }
                    let idle = room.members.is_empty()
                        && room.in_flight == 0
                        && room.ops.is_empty()
                        && room.last_activity.elapsed() >= idle_after
                        && !(clustered && dm_users_present(&handle.kind));
                    if idle {
                        room.closed = true;
                        handle.stop_following();
                        if let Some(actor) = handle.actor.lock().as_ref() {
                            let _ = actor.send_message(RoomMsg::Stop);
                        }
                    }
                    !idle
                });
                let registry = state.registry.read();
                state.crashes.retain(|name, _| registry.contains_key(name));
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
                ACTOR_FAILURES.counter_with("room").increment(1);
                ROOMS_ACTIVE.gauge().decrement(1.0); // a failed actor's post_stop does not run
                let Some(handle) = state.registry.read().get(&name).cloned() else { return Ok(()) };
                *handle.actor.lock() = None;
                let crashes = state
                    .crashes
                    .entry(name.clone())
                    .or_insert_with(|| RestartIntensity::new(ROOM_CRASHES_COUNTED_MAX, RESTART_WINDOW_MS));
                let (recent, _) = crashes.record(Instant::now());
                let wait_ms = (ROOM_RESTART_BACKOFF_MS * (recent as u64 - 1)).min(ROOM_RESTART_BACKOFF_MAX_MS);
                tracing::error!(room = %name, error = %err, recent, wait_ms, "room actor crashed; restarting");
                myself.send_after(Duration::from_millis(wait_ms), move || SupervisorMsg::Restart(name));
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.by_actor.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}
