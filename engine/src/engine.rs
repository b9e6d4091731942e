//! The engine: the parts wired together, and the entry points the gateway
//! uses (open a session, find a room, shut down in order).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use viche_protocol::{Encoding, ErrorCode};

use crate::auth::Jwt;
use crate::config::EngineConfig;
use crate::directory::Directory;
use crate::outbox::Outbox;
use crate::peer::Peer;
use crate::room::RoomHandle;
use crate::rooms::{RoomSupervisor, SupervisorArgs, SupervisorMsg};
use crate::session::Session;
use crate::store::Store;
use crate::writer::{spawn_writer, WriterHandle};

pub struct Engine {
    pub config: EngineConfig,
    pub store: Arc<dyn Store>,
    pub writer: WriterHandle,
    pub directory: Arc<Directory>,
    pub jwt: Jwt,
    rooms: ActorRef<SupervisorMsg>,
    next_session_id: AtomicU64,
}

/// Rooms one process keeps active at once; past it, joins get `overloaded`.
pub const ROOMS_MAX: usize = 1_000_000;
const ROOM_LOOKUP_TIMEOUT_MS: u64 = 10_000;

impl Engine {
    pub async fn start(config: EngineConfig, store: Arc<dyn Store>, jwt: Jwt) -> anyhow::Result<Arc<Self>> {
        let directory = Arc::new(Directory::default());
        let (writer, _writer_task) = spawn_writer(store.clone(), config.writer_queue_max, config.writer_batch_max);
        let args = SupervisorArgs {
            store: store.clone(),
            directory: directory.clone(),
            room_idle_ms: config.room_idle_ms,
            rooms_max: ROOMS_MAX,
        };
        let (rooms, _) =
            Actor::spawn(None, RoomSupervisor, args).await.map_err(|e| anyhow::anyhow!("room supervisor: {e}"))?;
        Ok(Arc::new(Self { config, store, writer, directory, jwt, rooms, next_session_id: AtomicU64::new(1) }))
    }

    /// Registers an authenticated connection and returns its session.
    pub fn open_session(self: &Arc<Self>, user: &str, encoding: Encoding, token_exp_ms: u64) -> Session {
        let peer = Arc::new(Peer {
            id: self.next_session_id.fetch_add(1, Ordering::Relaxed),
            user: user.into(),
            encoding,
            outbox: Outbox::new(self.config.outbox_max_frames, self.config.outbox_max_bytes),
        });
        self.directory.register(peer.clone());
        Session::new(self.clone(), peer, token_exp_ms)
    }

    /// The live handle of a room (spawned on first use).
    pub async fn room(&self, name: &str) -> Result<Arc<RoomHandle>, (ErrorCode, String)> {
        let result = ractor::call_t!(self.rooms, SupervisorMsg::GetOrSpawn, ROOM_LOOKUP_TIMEOUT_MS, name.into());
        match result {
            Ok(Ok(handle)) => Ok(handle),
            Ok(Err(ErrorCode::NotFound)) => Err((ErrorCode::NotFound, "no such user".into())),
            Ok(Err(code)) => Err((code, "room unavailable".into())),
            Err(e) => {
                tracing::error!(error = %e, room = name, "room supervisor did not answer");
                Err((ErrorCode::Overloaded, "room unavailable; retry".into()))
            }
        }
    }

    /// Shutdown, in order: wait (bounded) until the writer has committed
    /// and published everything queued, then ask every session to close
    /// with 1001 once its outbox is written.
    pub async fn shutdown(&self, max_wait: Duration) {
        let deadline = tokio::time::Instant::now() + max_wait;
        while self.writer.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let rooms publish what the writer just handed them.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for peer in self.directory.all() {
            peer.outbox.close(viche_protocol::close_code::GOING_AWAY, "server shutting down", true);
        }
    }
}
