//! The engine's long-lived parts, built once at start and shared by the
//! front door ([`crate::Engine`]) and every session. It exists so that a
//! session depends on the parts it uses, not on the front door that
//! creates it (no import cycle).

use std::sync::Arc;

use ractor::ActorRef;

use crate::accounts::Accounts;
use crate::cluster::Cluster;
use crate::config::EngineConfig;
use crate::delivery::Directory;
use crate::health::Health;
use crate::room::Rooms;
use crate::session::SessionEvent;
use crate::store::Store;
use crate::writer::WriterHandle;

pub(crate) struct Services {
    pub config: EngineConfig,
    pub store: Arc<dyn Store>,
    pub writer: WriterHandle,
    pub directory: Arc<Directory>,
    pub rooms: Rooms,
    pub accounts: Accounts,
    pub health: Arc<Health>,
    /// In a cluster: this node's part in it.
    pub cluster: Option<Arc<Cluster>>,
    /// Observes every session's exit.
    pub sessions: ActorRef<SessionEvent>,
}
