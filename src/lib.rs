/*!
switchboard: one small binary that connects chat platforms to an agent.

See `README.md` for the user's view and `DESIGN.md` (in the shared folder) for the shape:
one thread per platform adapter, a supervisor thread that reconnects failed platforms
with exponential backoff, a router that hands messages to the agent, and per-platform
delivery workers.
*/

pub mod adapter;
pub mod agent;
pub mod auth;
pub mod backoff;
pub mod commands;
pub mod config;
pub mod delivery;
pub mod directory;
pub mod fsutil;
pub mod gateway;
pub mod inbox;
pub mod kit;
pub mod lock;
pub mod log;
pub mod memory;
pub mod message;
pub mod net;
pub mod platform;
pub mod platforms;
pub mod router;
pub mod services;
pub mod session;
pub mod status;
pub mod supervise;
pub mod supervisor;
pub mod testhook;
pub mod text;
pub mod turn;
pub mod typing;
pub mod workqueue;
