/*!
switchboard: one small binary that connects chat platforms to an agent.

See `README.md` for the user's view and `../shared/DESIGN.md` for the shape: one thread per
platform adapter, a supervisor thread that reconnects failed platforms with exponential
backoff, a router that hands messages to the agent, and per-platform delivery workers.
*/

pub mod adapter;
pub mod config;
pub mod delivery;
pub mod lock;
pub mod message;
pub mod platforms;
pub mod text;
