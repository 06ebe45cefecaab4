//! The built-in echo agent: replies `echo: <text>`. Needs no network and no model, so a
//! fresh `make run` answers at once.

use super::{Agent, AgentError};
use crate::message::Inbound;

pub struct Echo;

impl Agent for Echo {
    fn reply(&self, msg: &Inbound) -> Result<String, AgentError> {
        Ok(format!("echo: {}", msg.text))
    }
}
