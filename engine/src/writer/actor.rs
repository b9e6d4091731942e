//! `WriterActor`: the writer as a ractor actor under the engine
//! supervisor. Its mailbox carries only `Run`, one batch per message, so
//! that the actor's lifecycle (start, crash, restart) is ractor's; the
//! bounded queue senders fill is in [`WriterShared`], and so is the batch
//! in flight, so neither is lost when the actor dies.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::{commit, publish, WriteRequest, WriterShared};
use crate::clock::now_ms;
use crate::faults;
use crate::metrics::WRITER_BATCH_SIZE;
use crate::store::NewMessage;

pub(crate) struct WriterActor;

pub(crate) enum WriterMsg {
    /// Commit the next batch (or the one a crashed predecessor left).
    Run,
}

pub(crate) struct WriterState {
    shared: Arc<WriterShared>,
    /// Reused across batches.
    requests: Vec<WriteRequest>,
    messages: Vec<NewMessage>,
}

impl Actor for WriterActor {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = Arc<WriterShared>;

    async fn pre_start(
        &self,
        myself: ActorRef<WriterMsg>,
        shared: Arc<WriterShared>,
    ) -> Result<WriterState, ActorProcessingErr> {
        shared.health.set_writer_up(true);
        myself.send_message(WriterMsg::Run)?;
        let requests = Vec::with_capacity(shared.batch_max);
        let messages = Vec::with_capacity(shared.batch_max);
        Ok(WriterState { shared, requests, messages })
    }

    async fn post_stop(&self, _: ActorRef<WriterMsg>, state: &mut WriterState) -> Result<(), ActorProcessingErr> {
        state.shared.health.set_writer_up(false);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WriterMsg>,
        msg: WriterMsg,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::Run => {
                if state.run_one().await {
                    myself.send_message(WriterMsg::Run)?;
                } else {
                    // Every sender is gone and the queue is written out.
                    myself.stop(None);
                }
            }
        }
        Ok(())
    }
}

impl WriterState {
    /// Commits one batch and answers it; false once the queue is closed
    /// and empty.
    async fn run_one(&mut self) -> bool {
        let shared = self.shared.clone();
        debug_assert!(self.requests.is_empty());
        // A batch left by a writer that crashed while committing it.
        std::mem::swap(&mut self.requests, &mut *shared.in_flight.lock());
        if self.requests.is_empty() {
            let mut rx = shared.rx.lock().await;
            if rx.recv_many(&mut self.requests, shared.batch_max).await == 0 {
                return false;
            }
        } else {
            tracing::warn!(batch = self.requests.len(), "committing the batch a crashed writer left");
        }
        let ts_ms = now_ms();
        self.messages.clear();
        self.messages.extend(self.requests.iter().map(|r| NewMessage { ts_ms, ..r.message.clone() }));
        // Park the batch where a successor finds it if this actor dies.
        std::mem::swap(&mut self.requests, &mut *shared.in_flight.lock());

        if let Some(_arg) = faults::eval("writer.commit").await {
            panic!("failpoint writer.commit: return before a commit");
        }
        let outcomes = commit::commit(&shared, &self.messages).await;
        if let Some(_arg) = faults::eval("writer.commit").await {
            panic!("failpoint writer.commit: return after a commit");
        }
        WRITER_BATCH_SIZE.histogram().record(self.messages.len() as f64);

        std::mem::swap(&mut self.requests, &mut *shared.in_flight.lock());
        publish(&self.requests, outcomes, shared.cluster.as_deref());
        let done = self.requests.len();
        self.requests.clear(); // ends each request's InFlight guard
        shared.pending.fetch_sub(done, Ordering::Relaxed);
        true
    }
}
