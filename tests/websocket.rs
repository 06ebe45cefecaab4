/*!
The WebSocket connector (`net::ws`) on the real wire: tungstenite's server side on
127.0.0.1 (`support::fake_ws`, plain and TLS) and raw TCP listeners playing servers that
misbehave. Every wait is a deadline on a condition; where a test proves that something
ends "at once", it gives the call a deadline of minutes and waits seconds for it.
*/
#![cfg(feature = "websocket")]

mod support;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use crossbeam_channel::bounded;
use switchboard::adapter::{Context, Stopped};
use switchboard::net::ws::{self, Frame, WsConn, WsError, WsErrorKind, WsOptions};
use tungstenite::Message;

use support::deadline;
use support::fake_ws::{FakeWs, Peer, client_tls};

/// How long a test waits for something that should take milliseconds.
const SOON: Duration = Duration::from_secs(10);

/// A deadline no test waits for: a call that returns within [`SOON`] was cut short.
const NEVER: Duration = Duration::from_secs(600);

fn options() -> WsOptions {
    WsOptions { connect_timeout: SOON, handshake_timeout: SOON, send_timeout: SOON, ..WsOptions::default() }
}

/// A connection to `fake` at `path`, and the fake's end of it.
fn open(fake: &FakeWs, path: &str, opts: &WsOptions) -> (WsConn, Peer) {
    let conn = ws::connect(&fake.url(path), opts, |_| {}).expect("connect to the fake");
    (conn, fake.accept(SOON))
}

/// The next frame, which must come before [`SOON`].
fn next_frame(conn: &mut WsConn) -> Frame {
    conn.recv(deadline(SOON)).expect("a frame").expect("a frame before the deadline")
}

fn connect_err(url: &str, opts: &WsOptions) -> WsError {
    ws::connect(url, opts, |_| {}).expect_err("the connect must fail")
}

/// A listener that accepts TCP connections and never says anything: a server that hangs
/// after the TCP handshake. The accepted sockets stay open while the listener lives.
fn silent_server() -> (TcpListener, thread::JoinHandle<()>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = listener.try_clone().unwrap();
    let holder = thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        // Ends when the test binary does; each accepted socket is kept open and unread.
        while let Ok((socket, _)) = accepting.accept() {
            held.push(socket);
        }
    });
    (listener, holder, addr.to_string())
}

fn unused_port_url(path: &str) -> String {
    support::unused_url().replacen("http://", "ws://", 1) + path
}

#[test]
fn text_frames_go_both_ways_with_the_headers_and_query_asked_for() {
    let fake = FakeWs::start();
    let opts = WsOptions { headers: vec![("Authorization".into(), "Bearer mm-token".into())], ..options() };
    let (mut conn, mut peer) = open(&fake, "/api/v4/websocket?v=10&encoding=json", &opts);
    assert_eq!(peer.target(), "/api/v4/websocket?v=10&encoding=json");
    assert_eq!(peer.header("authorization"), Some("Bearer mm-token"));
    conn.send_text(r#"{"op":2}"#).unwrap();
    assert_eq!(peer.recv(SOON), Some(Message::text(r#"{"op":2}"#)));
    peer.send_text(r#"{"op":10}"#);
    assert_eq!(next_frame(&mut conn), Frame::Text(r#"{"op":10}"#.into()));
    peer.send(Message::binary(vec![0, 1, 2]));
    assert_eq!(next_frame(&mut conn), Frame::Binary(vec![0, 1, 2]));
}

#[test]
fn a_ping_is_answered_while_the_caller_waits_for_frames() {
    let fake = FakeWs::start();
    let (mut conn, mut peer) = open(&fake, "/", &options());
    conn.send_ping(b"are you there").unwrap();
    assert_eq!(peer.recv(SOON), Some(Message::Ping(b"are you there".to_vec().into())));
    let client = thread::spawn(move || next_frame(&mut conn));
    peer.send(Message::Ping(b"beat".to_vec().into()));
    // The fake's own pong (to the client's ping) goes out with this read.
    assert_eq!(peer.recv(SOON), Some(Message::Pong(b"beat".to_vec().into())));
    peer.send_text("done");
    assert_eq!(client.join().unwrap(), Frame::Text("done".into()), "pings and pongs are not handed over");
}

/// A server that reads nothing fills the socket's buffers: a send then fails within
/// the send timeout (retryable) instead of blocking the adapter for ever.
#[test]
fn a_send_to_a_server_that_reads_nothing_times_out() {
    let fake = FakeWs::start();
    let opts = WsOptions { send_timeout: Duration::from_millis(200), ..options() };
    let (mut conn, _peer) = open(&fake, "/", &opts);
    let chunk = "x".repeat(1024 * 1024);
    // Loopback buffers hold a few MiB; 256 MiB unsent would mean no timeout.
    let err = (0..256).find_map(|_| conn.send_text(&chunk).err()).expect("a send timed out");
    assert_eq!(err.kind(), WsErrorKind::Timeout, "{err}");
    assert!(err.is_retryable());
}

/// Discord says "fix your intents" with close code 4014: the code and the reason reach
/// the caller, and the connection is done after them.
#[test]
fn a_close_code_and_reason_reach_the_caller() {
    let fake = FakeWs::start();
    let (mut conn, mut peer) = open(&fake, "/", &options());
    peer.close(4014, "Disallowed intent(s).");
    assert_eq!(next_frame(&mut conn), Frame::Close { code: 4014, reason: "Disallowed intent(s).".into() });
    assert_eq!(conn.recv(deadline(SOON)).unwrap_err().kind(), WsErrorKind::Closed);
    // The client answered the close, as RFC 6455 asks.
    assert!(matches!(peer.recv(SOON), Some(Message::Close(Some(f))) if u16::from(f.code) == 4014));
}

#[test]
fn the_caller_closes_with_its_own_code() {
    let fake = FakeWs::start();
    let (mut conn, mut peer) = open(&fake, "/", &options());
    conn.send_close(4000, "zombie connection").unwrap();
    match peer.recv(SOON) {
        Some(Message::Close(Some(f))) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4000, "zombie connection"))
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // The fake answers the close (tungstenite sends the answer with its next read, which
    // then ends).
    assert_eq!(peer.recv(SOON), None);
    assert_eq!(next_frame(&mut conn), Frame::Close { code: 4000, reason: "zombie connection".into() });
    assert_eq!(conn.send_text("late").unwrap_err().kind(), WsErrorKind::Closed);
    assert_eq!(conn.recv(deadline(SOON)).unwrap_err().kind(), WsErrorKind::Closed);
}

/// A `recv` whose deadline passes returns `Ok(None)` (a tick for heartbeats and the
/// outbound queue), also in the middle of a frame, and the connection goes on: the rest
/// of the frame completes it.
#[test]
fn recv_ticks_at_its_deadline_and_the_connection_stays_usable() {
    let fake = FakeWs::start();
    let (mut conn, mut peer) = open(&fake, "/", &options());
    assert_eq!(conn.recv(deadline(Duration::from_millis(30))), Ok(None));
    // Half a text frame "hello world" (FIN, text, 11 bytes), then a tick, then the rest.
    peer.write_raw(&[0x81, 11]);
    peer.write_raw(b"hello");
    assert_eq!(conn.recv(deadline(Duration::from_millis(30))), Ok(None));
    peer.write_raw(b" world");
    assert_eq!(next_frame(&mut conn), Frame::Text("hello world".into()));
    // A deadline already passed still reads what has arrived.
    peer.send_text("queued");
    assert!(support::wait_until(deadline(SOON), || {
        match conn.recv(std::time::Instant::now()) {
            Ok(None) => false,
            Ok(Some(frame)) => frame == Frame::Text("queued".into()),
            Err(e) => panic!("{e}"),
        }
    }));
    conn.send_text("still here").unwrap();
    assert_eq!(peer.recv(SOON), Some(Message::text("still here")));
}

/// The stop handle, called from another thread, ends a `recv` blocked for ten minutes at
/// once; later calls fail the same way.
#[test]
fn the_stop_handle_ends_a_blocked_recv_at_once() {
    let fake = FakeWs::start();
    let (mut conn, mut peer) = open(&fake, "/", &options());
    let stop = conn.stop_handle();
    let (ready_tx, ready) = bounded(1);
    let (done_tx, done) = bounded(1);
    thread::spawn(move || {
        assert_eq!(next_frame(&mut conn), Frame::Text("ready".into()));
        ready_tx.send(()).unwrap();
        let blocked = conn.recv(deadline(NEVER));
        let after = conn.send_text("after the stop");
        done_tx.send((blocked, after)).unwrap();
    });
    peer.send_text("ready");
    ready.recv_timeout(SOON).unwrap();
    stop.stop();
    let (blocked, after) = done.recv_timeout(SOON).expect("the stop ended the recv long before its deadline");
    assert_eq!(blocked.unwrap_err().kind(), WsErrorKind::Stopped);
    assert_eq!(after.unwrap_err().kind(), WsErrorKind::Stopped);
}

/// The way an adapter uses it: the handle goes to `Context::on_stop` from `connect`, and
/// dropping the context's `Stop` wakes the adapter blocked in `recv`.
#[test]
fn a_context_stop_ends_a_blocked_recv() {
    let fake = FakeWs::start();
    let (inbound, _rx) = crossbeam_channel::unbounded();
    let (ctx, stop) = Context::new("ws", PathBuf::from("."), inbound);
    let mut conn = ws::connect(&fake.url("/"), &options(), |h| ctx.on_stop(move || h.stop())).unwrap();
    let _peer = fake.accept(SOON);
    let (done_tx, done) = bounded(1);
    thread::spawn(move || {
        let outcome = ctx.interruptible(|| conn.recv(deadline(NEVER)).map(drop));
        done_tx.send(outcome).unwrap();
    });
    drop(stop);
    assert_eq!(done.recv_timeout(SOON).expect("the stop ended the recv"), Err(Stopped));
}

/// A server that accepts the TCP connection and never answers the upgrade: a stop cuts
/// the handshake short (the handle reaches the caller before the upgrade starts).
#[test]
fn a_stop_ends_a_hanging_upgrade() {
    let (_listener, _holder, addr) = silent_server();
    let (handle_tx, handle) = bounded(1);
    let (done_tx, done) = bounded(1);
    let url = format!("ws://{addr}/");
    thread::spawn(move || {
        let opts = WsOptions { handshake_timeout: NEVER, ..options() };
        let outcome = ws::connect(&url, &opts, |h| handle_tx.send(h).unwrap()).map(drop);
        done_tx.send(outcome).unwrap();
    });
    handle.recv_timeout(SOON).expect("the stop handle, once the TCP connection exists").stop();
    let outcome = done.recv_timeout(SOON).expect("the stop ended the upgrade long before its timeout");
    assert_eq!(outcome.unwrap_err().kind(), WsErrorKind::Stopped);
}

#[test]
fn nothing_listening_is_retryable() {
    let err = connect_err(&unused_port_url("/"), &options());
    assert_eq!(err.kind(), WsErrorKind::Refused, "{err}");
    assert!(err.is_retryable());
}

#[test]
fn an_upgrade_that_never_comes_times_out_and_is_retryable() {
    let (_listener, _holder, addr) = silent_server();
    let opts = WsOptions { handshake_timeout: Duration::from_millis(200), ..options() };
    for url in [format!("ws://{addr}/"), format!("wss://{addr}/")] {
        let err = connect_err(&url, &WsOptions { tls: Some(client_tls()), ..opts.clone() });
        assert_eq!(err.kind(), WsErrorKind::Timeout, "{url}: {err}");
        assert!(err.is_retryable());
    }
}

/// A bad token (Mattermost's, in the upgrade's header) is a 401 or 403 on the upgrade:
/// retrying cannot help. Other refusals may heal, and keep the wait they ask for.
#[test]
fn a_401_or_403_on_the_upgrade_is_not_retryable() {
    let fake = FakeWs::start();
    for status in [401, 403] {
        fake.refuse(status, &[]);
        let err = connect_err(&fake.url("/"), &options());
        assert_eq!(err.kind(), WsErrorKind::Status(status), "{err}");
        assert!(!err.is_retryable());
        let fatal = err.fatal("mattermost");
        assert_eq!((fatal.code.as_str(), fatal.retryable), ("mattermost_ws_unauthorized", false));
    }
    fake.refuse(503, &[("Retry-After", "7")]);
    let err = connect_err(&fake.url("/"), &options());
    assert_eq!(err.kind(), WsErrorKind::Status(503));
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

/// A hostile server announces a frame of a terabyte: it is refused from its header. Had
/// the client tried to allocate it, the test process would have aborted.
#[test]
fn an_oversized_frame_is_refused_without_allocating_it() {
    let fake = FakeWs::start();
    let (mut conn, mut peer) = open(&fake, "/", &options());
    let mut header = vec![0x82, 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    peer.write_raw(&header);
    let err = conn.recv(deadline(SOON)).unwrap_err();
    assert_eq!(err.kind(), WsErrorKind::TooLarge, "{err}");
    assert!(err.is_retryable());
}

/// The cap is on whole messages too: fragments that each fit but add up to more.
#[test]
fn a_message_of_fragments_larger_than_the_cap_is_refused() {
    let fake = FakeWs::start();
    let (mut conn, mut peer) = open(&fake, "/", &WsOptions { max_message: 64 * 1024, ..options() });
    let fragment = |opcode: u8| {
        let mut frame = vec![opcode, 126];
        frame.extend_from_slice(&40_000u16.to_be_bytes());
        frame.extend(std::iter::repeat_n(b'x', 40_000));
        frame
    };
    peer.write_raw(&fragment(0x01)); // text, not final
    peer.write_raw(&fragment(0x00)); // continuation, not final
    let err = conn.recv(deadline(SOON)).unwrap_err();
    assert_eq!(err.kind(), WsErrorKind::TooLarge, "{err}");
}

/// Slack's socket URL carries its ticket in the query string: no error text shows it.
#[test]
fn the_query_string_never_appears_in_an_error() {
    let secret = "SECRET-TICKET";
    let query = format!("/link/?ticket={secret}&app_id=A1");
    let fake = FakeWs::start();
    let tls_fake = FakeWs::start_tls();
    let (_listener, _holder, silent) = silent_server();
    let short = WsOptions { handshake_timeout: Duration::from_millis(200), ..options() };
    let mut errors = vec![
        connect_err(&unused_port_url(&query), &options()),
        connect_err(&format!("ws://{silent}{query}"), &short),
        connect_err(&tls_fake.url(&query), &options()),
        connect_err(&fake.url(&query).replacen("ws://", "wss://", 1), &options()),
        connect_err(&format!("ws://192.0.2.1{query}"), &options()),
        connect_err(&format!("http://example.com{query}"), &options()),
    ];
    fake.refuse(401, &[]);
    errors.push(connect_err(&fake.url(&query), &options()));
    for err in &errors {
        for text in [err.to_string(), format!("{err:?}"), err.fatal("slack").message] {
            assert!(!text.contains(secret) && !text.contains("app_id"), "{text}");
        }
    }
    // And the query string does go to the server.
    let fake = FakeWs::start();
    let (mut conn, mut peer) = open(&fake, &query, &options());
    assert_eq!(peer.target(), query);
    peer.write_raw(&[0x82, 127, 0x7f, 0, 0, 0, 0, 0, 0, 0]);
    let err = conn.recv(deadline(SOON)).unwrap_err();
    assert!(!err.to_string().contains(secret), "{err}");
}

/// `ws://` sends everything, a token too, in clear text: only to loopback unless the
/// caller allows more. Refused before any packet leaves (192.0.2.1 is TEST-NET-1).
#[test]
fn plain_ws_goes_only_to_loopback_unless_allowed() {
    let err = connect_err("ws://192.0.2.1:8065/api/v4/websocket", &options());
    assert_eq!(err.kind(), WsErrorKind::Config, "{err}");
    assert!(!err.is_retryable());
    let fake = FakeWs::start();
    let localhost = fake.url("/").replacen("127.0.0.1", "localhost", 1);
    assert!(ws::connect(&localhost, &options(), |_| {}).is_ok(), "localhost is loopback");
}

#[test]
fn wss_speaks_tls_verified_against_the_roots_given() {
    let fake = FakeWs::start_tls();
    let opts = WsOptions { tls: Some(client_tls()), ..options() };
    for host in ["127.0.0.1", "localhost"] {
        let url = fake.url("/?v=10").replacen("127.0.0.1", host, 1);
        let mut conn = ws::connect(&url, &opts, |_| {}).expect("a TLS connection to the fake");
        let mut peer = fake.accept(SOON);
        conn.send_text("over TLS").unwrap();
        assert_eq!(peer.recv(SOON), Some(Message::text("over TLS")));
        peer.send_text("back");
        assert_eq!(next_frame(&mut conn), Frame::Text("back".into()));
        // A tick inside TLS leaves the connection usable too.
        assert_eq!(conn.recv(deadline(Duration::from_millis(30))), Ok(None));
        peer.send_text("again");
        assert_eq!(next_frame(&mut conn), Frame::Text("again".into()));
    }
}

/// The default roots (webpki) do not know the test CA: a certificate failure, retryable
/// under its own code (a clock not yet set after boot heals).
#[test]
fn an_unverifiable_certificate_is_a_certificate_error() {
    let fake = FakeWs::start_tls();
    let err = connect_err(&fake.url("/"), &options());
    assert_eq!(err.kind(), WsErrorKind::Certificate, "{err}");
    assert!(err.is_retryable());
    assert_eq!(err.fatal("discord").code, "discord_ws_certificate");
}

#[test]
fn wss_to_a_server_without_tls_is_a_tls_error() {
    // The fake answers a ClientHello as a (bad) HTTP request and hangs up.
    let fake = FakeWs::start();
    let err = connect_err(&fake.url("/").replacen("ws://", "wss://", 1), &options());
    assert_eq!(err.kind(), WsErrorKind::Tls, "{err}");
    assert!(err.is_retryable());
    // A raw server that sends HTTP garbage at once: the same.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let _ = std::io::Write::write_all(&mut socket, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        let _ = socket.read(&mut [0; 512]);
    });
    let err = connect_err(&format!("wss://{addr}/"), &options());
    assert_eq!(err.kind(), WsErrorKind::Tls, "{err}");
}
