/*!
The platform kit: what every platform's receive side would otherwise write again.

- [`call`]: the request loop of an adapter's own calls, around stop requests and the
  quick-retry policy ([`crate::net::retry`]).
- [`Cursor`]: a platform's place in its stream (an offset, a sync token, a resume
  state), one small file written atomically.
- [`deliver_then`]: "journal the batch, then advance the cursor", written once for all:
  the platform's acknowledgement (a cursor write, an envelope ACK, a PUBACK) runs only
  after the gateway's inbox holds every message of the batch.

The JSON API client is [`crate::net::api`].
*/

mod cursor;

pub use cursor::Cursor;

use std::fmt::Display;

use crate::adapter::{Context, Stopped};
use crate::message::Inbound;
use crate::net::api::ApiError;
use crate::net::retry::Retries;
use crate::platform::Fatal;

/// How a wait or a call sequence ended early.
#[derive(Debug, PartialEq, Eq)]
pub enum Halt {
    Stopped,
    Fatal(Fatal),
}

impl From<Stopped> for Halt {
    fn from(_: Stopped) -> Halt {
        Halt::Stopped
    }
}

impl From<Fatal> for Halt {
    fn from(fatal: Fatal) -> Halt {
        Halt::Fatal(fatal)
    }
}

impl Halt {
    /// How [`crate::platform::Platform::run`] reports it: a stop is a clean end.
    pub fn into_run_result(self) -> Result<(), Fatal> {
        match self {
            Halt::Stopped => Ok(()),
            Halt::Fatal(fatal) => Err(fatal),
        }
    }
}

/// Make `attempt` until it succeeds, the retry policy gives up, or a stop is requested.
/// Each attempt runs through [`Context::interruptible`], so the call it makes must be one
/// a stop action cuts short (an agent registered with [`Context::on_stop`]). A success
/// resets the policy's counts and is progress ([`Context::progress`]).
pub fn call<T, E>(
    ctx: &Context,
    retries: &mut Retries,
    what: impl Display,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, Halt>
where
    E: Into<ApiError>,
{
    loop {
        match ctx.interruptible(&mut attempt)? {
            Ok(value) => {
                retries.reset();
                ctx.progress();
                return Ok(value);
            }
            Err(err) => {
                let err = err.into();
                log::warn!("{}: {what}: {err}", ctx.name);
                let wait = retries.after(err)?;
                ctx.sleep(wait)?;
            }
        }
    }
}

/// Hand `batch` to the gateway (journaled in the inbox, one disk sync for all), and only
/// then run `commit`: move the platform's cursor past the batch, acknowledge it. On a stop
/// `commit` does not run, so the platform sends the batch again after a restart and the
/// inbox drops what it already holds: nothing lost, nothing answered twice.
pub fn deliver_then<R>(ctx: &Context, batch: Vec<Inbound>, commit: impl FnOnce() -> R) -> Result<R, Stopped> {
    ctx.deliver_batch(batch)?;
    Ok(commit())
}
