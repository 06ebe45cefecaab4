/*!
The router: takes each inbound message from the adapters, records its chat in the
channel directory, asks the agent for a reply and queues the reply for delivery to the
platform instance it came from.

One router thread handles messages in arrival order. It counts what it has taken but
not finished, so a stopping gateway can [`Router::drain`] and answer every message it
accepted before exiting.
*/

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crossbeam_channel::{Receiver, Select};
use parking_lot::{Condvar, Mutex};

use crate::agent::Agent;
use crate::delivery::Outlets;
use crate::directory::Directory;
use crate::message::{Inbound, Outbound};

/// A handle on the running router thread.
#[derive(Clone)]
pub struct Router {
    inbound: Receiver<Inbound>,
    /// Messages taken from the channel and not yet answered.
    busy: Arc<(Mutex<usize>, Condvar)>,
}

impl Router {
    /// Start the router thread reading `inbound`.
    pub fn start(
        inbound: Receiver<Inbound>,
        agent: Box<dyn Agent>,
        outlets: Outlets,
        directory: Arc<Directory>,
    ) -> std::io::Result<Router> {
        let router = Router { inbound, busy: Arc::default() };
        let worker = router.clone();
        thread::Builder::new().name("router".into()).spawn(move || worker.work(&*agent, &outlets, &directory))?;
        Ok(router)
    }

    /// Wait until every accepted message has been answered (its reply queued), or until
    /// `deadline`. Returns whether it drained.
    pub fn drain(&self, deadline: Instant) -> bool {
        let (lock, cond) = &*self.busy;
        let mut busy = lock.lock();
        while *busy > 0 || !self.inbound.is_empty() {
            if cond.wait_until(&mut busy, deadline).timed_out() {
                return false;
            }
        }
        true
    }

    fn work(&self, agent: &dyn Agent, outlets: &Outlets, directory: &Directory) {
        let (lock, cond) = &*self.busy;
        loop {
            // Wait for a message without taking it, then take it under the lock, so
            // `drain` never sees an empty channel while a message is between the two.
            let mut ready = Select::new();
            ready.recv(&self.inbound);
            ready.ready();
            let msg = {
                let mut busy = lock.lock();
                match self.inbound.try_recv() {
                    Ok(msg) => {
                        *busy += 1;
                        msg
                    }
                    Err(e) if e.is_disconnected() => return,
                    Err(_) => continue,
                }
            };
            handle(&msg, agent, outlets, directory);
            *lock.lock() -= 1;
            cond.notify_all();
        }
    }
}

fn handle(msg: &Inbound, agent: &dyn Agent, outlets: &Outlets, directory: &Directory) {
    directory.observe(&msg.source);
    // Minimal adaptation to the new `Agent::reply`; the router rewrite replaces it.
    let turn = crate::agent::Turn { text: &msg.text, session_key: "", history: &[], source: &msg.source };
    let text = match agent.reply(&turn, &crate::agent::Cancel::new(), &mut |_| {}) {
        Ok(reply) => reply.text,
        Err(e) => {
            log::warn!("{}: agent failed for chat {}: {e}", msg.source.platform, msg.source.chat_id);
            e.user_message
        }
    };
    outlets.enqueue(&msg.source.platform, Outbound::reply_to(msg, text));
}
