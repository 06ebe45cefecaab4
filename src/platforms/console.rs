/*!
The console platform: the terminal as a chat.

Each line read from standard input is a message from the local user; each reply is
printed to standard output (logs go to standard error, so `echo hello | switchboard run`
prints only the reply). End of input stops the platform cleanly; with nothing else
configured the gateway then answers what it read and exits 0.
*/

use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{Receiver, unbounded};

use crate::adapter::{Context, Fatal, Outlet, Platform, SendError};
use crate::config::{PlatformSpec, Section};
use crate::message::{ChatType, Inbound, Outbound, Source};
use crate::text::{Limit, Unit};

/// The console has no settings of its own.
pub fn parse(_section: &mut Section) -> Arc<dyn PlatformSpec> {
    Arc::new(ConsoleSpec)
}

struct ConsoleSpec;

impl PlatformSpec for ConsoleSpec {
    fn build(&self) -> Box<dyn Platform> {
        Box::new(Console)
    }

    fn describe(&self) -> String {
        "reads standard input, replies on standard output".into()
    }

    fn message_limit(&self) -> Limit {
        // A terminal takes any length: never split.
        Limit { max: usize::MAX, unit: Unit::Chars }
    }
}

struct Console;

impl Platform for Console {
    fn connect(&mut self, _ctx: &Context) -> Result<Arc<dyn Outlet>, Fatal> {
        Ok(Arc::new(Stdout))
    }

    fn run(&mut self, ctx: &Context) -> Result<(), Fatal> {
        let lines = stdin_lines();
        let user = std::env::var("USER").unwrap_or_else(|_| "local".into());
        let ids = AtomicU64::new(1);
        while let Ok(Some(line)) = ctx.recv(lines) {
            let text = line.trim_end_matches(['\r', '\n']);
            if text.trim().is_empty() {
                continue;
            }
            let msg = Inbound {
                source: Source {
                    platform: ctx.name.clone(),
                    chat_id: "local".into(),
                    chat_type: ChatType::Dm,
                    chat_name: None,
                    user_id: Some(user.clone()),
                    user_name: Some(user.clone()),
                    thread_id: None,
                },
                message_id: Some(ids.fetch_add(1, Ordering::Relaxed).to_string()),
                text: text.to_string(),
            };
            if ctx.deliver(msg).is_err() {
                break;
            }
        }
        // End of input, or a stop request: both are a clean end.
        Ok(())
    }
}

/// Lines of standard input, read by one thread for the whole process: a read blocked
/// on a terminal cannot be cancelled, so a second reader would race the first for
/// input. The channel closes at end of input.
fn stdin_lines() -> &'static Receiver<String> {
    static LINES: OnceLock<Receiver<String>> = OnceLock::new();
    LINES.get_or_init(|| {
        let (tx, rx) = unbounded();
        let reader = move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        };
        // Restarted after a panic, so that it never passes for the end of input.
        if let Err(e) = crate::supervise::spawn("console-stdin", reader) {
            log::error!("console: cannot start the input reader: {e}");
        }
        rx
    })
}

struct Stdout;

impl Outlet for Stdout {
    fn send(&self, msg: &Outbound) -> Result<Option<String>, SendError> {
        let mut out = io::stdout().lock();
        writeln!(out, "{}", msg.text).and_then(|_| out.flush()).map_err(|e| SendError::Rejected(e.to_string()))?;
        Ok(None)
    }
}
