/*!
The benchmark's own helpers: fast fake servers and the gateway process.

Separate from `tests/support/` on purpose: the test fakes script faults and record
everything through tiny_http, which would make the fake the bottleneck here.
*/

pub mod fast_openai;
pub mod fast_telegram;
pub mod http;
pub mod process;
pub mod real_latency;
pub mod telegram_limits;
pub mod trace;
