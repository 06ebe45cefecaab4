//! The built-in echo agent: replies `echo: <text>`. Needs no network and no model, so a
//! fresh `make run` answers at once.

use super::{Agent, AgentError, Cancel, Reply, Turn};

pub struct Echo;

impl Agent for Echo {
    fn reply(&self, turn: &Turn<'_>, _cancel: &Cancel, _on_delta: &mut dyn FnMut(&str)) -> Result<Reply, AgentError> {
        Ok(Reply { text: format!("echo: {}", turn.text), ..Reply::default() })
    }
}
