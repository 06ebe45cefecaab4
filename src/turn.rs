/*!
One turn: a message in, the agent's answer out.

A worker thread runs it: open (or rotate) the session, tell the user once if it was
reset, load the history, ask the agent while a typing indicator shows, record both
sides in the transcript, and queue the answer in the durable outbox. Only then is the
message finished in the inbox; a turn cut short by a crash is answered after restart.

An answer that cannot be queued is kept in memory and queued again with growing waits
while the failure may heal (a full disk). One that never can (its platform instance was
removed from the config while the message waited, and the outbox has no such platform)
is dead-lettered under that platform's name instead, where `status` shows it: a worker
must never be held by a message no retry can finish.

With `stream = true`, an agent that streams, and a platform that can edit, the answer
appears while it is written: a first message, then edits at most every `edit_interval`.
The preview is best effort and sent directly; the final text goes through the outbox
(as an edit of the preview) like every other reply, so it survives an outage.
*/

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::agent::{AgentErrorKind, Cancel, Turn};
use crate::delivery;
use crate::inbox::Accepted;
use crate::message::{ChatMessage, Inbound, Outbound, Role};
use crate::platform::Outlet;
use crate::services::Services;
use crate::text;
use crate::typing::Chat;

/// First wait before storing an answer again after a failure (a full disk), doubling up
/// to the cap. The worker keeps trying: the message is accepted, so it must be answered.
const STORE_RETRY: Duration = Duration::from_secs(1);
const STORE_RETRY_CAP: Duration = Duration::from_secs(30);

/// A turn for a worker.
pub struct Work {
    pub turn: u64,
    pub key: String,
    pub accepted: Accepted,
    pub cancel: Cancel,
    /// The answer is known already (a command's, a pairing code) and only has to be
    /// stored: the router could not, because the disk was full.
    pub known_answer: Option<String>,
}

/// Run `work` to its end.
pub fn run(s: &Services, work: &Work) {
    if let Some(text) = &work.known_answer {
        if store(s, work, text, || enqueue(s, &work.accepted.msg, text)) {
            s.inbox.complete(&work.accepted.id);
        }
        return;
    }
    let msg = &work.accepted.msg;
    let chat = Chat {
        platform: msg.source.platform.clone(),
        chat_id: msg.source.chat_id.clone(),
        thread_id: msg.source.thread_id.clone(),
    };
    s.typing.begin(work.turn, chat);
    crate::testhook::panic_point("turn-run");
    let finished = answer(s, work);
    s.typing.end(work.turn);
    if finished {
        s.inbox.complete(&work.accepted.id);
    }
}

/// Returns whether the message is finished: its answer (if it gets one) is stored.
fn answer(s: &Services, work: &Work) -> bool {
    let msg = &work.accepted.msg;
    let begin = match s.sessions.begin_turn(&msg.source, SystemTime::now()) {
        Ok(begin) => begin,
        Err(e) => {
            log::error!("{}: cannot open the session: {e}; the message waits for a restart", work.key);
            return false;
        }
    };
    if let Some(notice) = begin.notice {
        s.reply(msg, notice);
    }
    let history = s.sessions.history(&begin.entry.session_id).unwrap_or_else(|e| {
        log::warn!("{}: cannot read the history, answering without it: {e}", work.key);
        Vec::new()
    });
    let turn = Turn { text: &msg.text, session_key: &work.key, history: &history, source: &msg.source };
    let mut preview = Preview::new(s, msg);
    let result = s.agent.reply(&turn, &work.cancel, &mut |delta| preview.push(delta));
    match result {
        Ok(reply) => {
            let record =
                [ChatMessage::new(Role::User, msg.text.clone()), ChatMessage::new(Role::Assistant, reply.text.clone())];
            let now = SystemTime::now();
            if let Err(e) = s.sessions.append(&work.key, &record, reply.input_tokens, reply.output_tokens, now) {
                log::warn!("{}: cannot record the turn in the transcript: {e}", work.key);
            }
            store(s, work, &reply.text, || preview.finish(&reply.text))
        }
        // `/stop`, `/new` or an interrupting message: it already got its answer.
        Err(e) if e.kind == AgentErrorKind::Cancelled => {
            preview.finish_cancelled();
            true
        }
        Err(e) => {
            log::warn!("{}: the agent failed: {}", work.key, e.detail);
            store(s, work, &e.user_message, || preview.finish(&e.user_message))
        }
    }
}

/// Run `attempt` (storing the answer `text` in the outbox) until it succeeds, waiting
/// longer after each failure that may heal. A failure that cannot heal dead-letters the
/// answer instead. Gives up only when the turn is cancelled (`/stop`, `/new`): the
/// message then stays in the inbox and is answered after a restart. Returns whether the
/// message is finished.
fn store(s: &Services, work: &Work, text: &str, mut attempt: impl FnMut() -> io::Result<()>) -> bool {
    let mut wait = STORE_RETRY;
    loop {
        let platform = &work.accepted.msg.source.platform;
        match attempt() {
            Ok(()) => return true,
            Err(e) if delivery::is_permanent(&e) => match dead_letter(s, work, text, &e) {
                Ok(()) => return true,
                // Cannot happen with a name from the config; the message waits in the inbox.
                Err(e) if delivery::is_permanent(&e) => return false,
                // A full disk: the dead letter is written once it has room.
                Err(_) => {}
            },
            Err(e) => log::error!("{platform}: cannot queue the answer to {}: {e}", work.key),
        }
        log::warn!("{}: the answer is kept in memory and stored again in {wait:?}", work.key);
        if work.cancel.wait(wait) {
            return false;
        }
        wait = (wait * 2).min(STORE_RETRY_CAP);
    }
}

/// Dead-letter an answer that can never be queued, with a log line naming the platform.
fn dead_letter(s: &Services, work: &Work, text: &str, why: &io::Error) -> io::Result<()> {
    let msg = &work.accepted.msg;
    let platform = &msg.source.platform;
    let why = format!("cannot be queued: {why}");
    match s.outbox.dead_letter(platform, Outbound::reply_to(msg, text.to_string()), &why) {
        Ok(file) => {
            log::error!(
                "{platform}: the answer to chat {} {why}; kept as a dead letter in {}",
                msg.source.chat_id,
                file.display()
            );
            Ok(())
        }
        Err(e) => {
            log::error!(
                "{platform}: the answer to chat {} {why}, and cannot be dead-lettered: {e}",
                msg.source.chat_id
            );
            Err(e)
        }
    }
}

/// Queue `text` as a reply to `msg`.
fn enqueue(s: &Services, msg: &Inbound, text: &str) -> io::Result<()> {
    s.outbox.enqueue(&msg.source.platform, Outbound::reply_to(msg, text.to_string()))
}

/// The streamed preview of an answer.
struct Preview<'a> {
    s: &'a Services,
    msg: &'a Inbound,
    /// `None` when not previewing (not streaming, cannot edit, or an edit failed).
    outlet: Option<Arc<dyn Outlet>>,
    text: String,
    shown_at: Option<Instant>,
    message_id: Option<String>,
}

/// Shown after the preview text while the answer is still being written.
const WRITING: &str = " …";

impl<'a> Preview<'a> {
    fn new(s: &'a Services, msg: &'a Inbound) -> Preview<'a> {
        let outlet = (s.config.stream && s.agent.streams())
            .then(|| s.outbox.outlet(&msg.source.platform))
            .flatten()
            .filter(|o| o.can_edit());
        Preview { s, msg, outlet, text: String::new(), shown_at: None, message_id: None }
    }

    fn push(&mut self, delta: &str) {
        self.text.push_str(delta);
        let due = self.shown_at.is_none_or(|t| t.elapsed() >= self.s.config.edit_interval);
        if self.outlet.is_some() && due && !self.text.trim().is_empty() {
            self.show();
        }
    }

    fn show(&mut self) {
        let Some(outlet) = self.outlet.clone() else { return };
        let shown = format!("{}{WRITING}", self.text);
        if !self.fits(&shown) {
            // Too long for one message: the final answer goes out split, as usual.
            self.outlet = None;
            return;
        }
        let result = match &self.message_id {
            None => outlet.send(&Outbound::reply_to(self.msg, shown)).map(|id| self.message_id = id),
            Some(id) => outlet.edit(&self.msg.source.chat_id, id, &shown),
        };
        if let Err(e) = result {
            log::debug!("{}: preview stopped: {e}", self.msg.source.platform);
            self.outlet = None;
        }
        self.shown_at = Some(Instant::now());
    }

    fn fits(&self, text: &str) -> bool {
        let limit = self.s.config.limits.get(&self.msg.source.platform);
        limit.is_none_or(|l| text::split(text, *l).len() <= 1)
    }

    /// Store the final text: as an edit of the preview when there is one and it fits,
    /// else as a new reply.
    fn finish(&self, text: &str) -> io::Result<()> {
        let Some(id) = self.message_id.as_deref() else { return enqueue(self.s, self.msg, text) };
        if self.fits(text) {
            return self.edit(id, text.to_string());
        }
        self.edit(id, "(the full answer follows)".to_string())?;
        enqueue(self.s, self.msg, text)
    }

    /// A cancelled answer leaves its preview saying so.
    fn finish_cancelled(self) {
        if let Some(id) = self.message_id.clone() {
            let text = format!("{} (stopped)", self.text.trim_end());
            if let Err(e) = self.edit(&id, text) {
                log::error!("{}: cannot queue the end of a stopped preview: {e}", self.msg.source.platform);
            }
        }
    }

    fn edit(&self, id: &str, text: String) -> io::Result<()> {
        let edit = Outbound { edit_of: Some(id.to_string()), ..Outbound::reply_to(self.msg, text) };
        self.s.outbox.enqueue(&self.msg.source.platform, edit)
    }
}
