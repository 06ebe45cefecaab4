/*!
Shared test helpers: fake platform servers on `127.0.0.1:0` and waiting with deadlines.

Each integration test binary includes this module with `mod support;` and uses a
different part of it, hence the `dead_code` allowance below.
*/
#![allow(dead_code)]

pub mod chaos_proxy;
pub mod fake_openai;
pub mod fake_telegram;
#[cfg(feature = "websocket")]
pub mod fake_ws;
pub mod gateway;
pub mod http;
pub mod http_wire;
pub mod threads;
pub mod watched;

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

/// `d` from now.
pub fn deadline(d: Duration) -> Instant {
    Instant::now() + d
}

/// Wait until `cond` holds or `deadline` passes; returns whether it held.
///
/// For conditions nothing can signal (a file's contents, a value behind someone else's
/// lock), so it checks every 5 ms. Prefer a blocking wait where one exists (a channel's
/// `recv_timeout`, the fakes' `wait_*` methods).
pub fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(5)));
    }
}

/// A `http://127.0.0.1:PORT` where nothing listens (the port was just free), for
/// "connection refused".
pub fn unused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}
