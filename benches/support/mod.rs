/*!
The benchmark's own helpers: fast fake servers and the gateway process.

Separate from `tests/support/` on purpose: the test fakes script faults and record
every call, which would make the fake the bottleneck here. The request reader is shared
(`http_wire`, included from `tests/support/`).
*/

pub mod fast_openai;
pub mod fast_telegram;
pub mod http;
#[path = "../../tests/support/http_wire.rs"]
pub mod http_wire;
pub mod process;
pub mod real_latency;
pub mod telegram_limits;
pub mod trace;
