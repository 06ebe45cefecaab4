/*!
A TCP proxy on `127.0.0.1` that breaks connections on purpose, for the fault-injection
suite (`tests/chaos.rs`).

It sits between a gateway and a fake server: point the gateway's `api_base` at
[`ChaosProxy::url`] and it forwards every byte to the upstream address until told to
misbehave. It faults what an HTTP-level fake cannot: the transport itself.

- [`ChaosProxy::cut`]: the next `count` requests for a method (the last segment of the
  request path, e.g. `sendMessage`) lose their connection, either [`Cut::Before`] the
  request reaches the server (it never acts on it) or [`Cut::After`] (the server acts, the
  answer is lost: the sender cannot know). The connection is closed ([`How::Close`], a
  FIN) or reset ([`How::Reset`], an RST).
- [`ChaosProxy::break_all`]: close or reset every open connection now, mid-request for
  whatever is in flight (a held long poll always is).
- [`ChaosProxy::refuse`] and [`ChaosProxy::listen`]: stop listening (the listener is
  dropped, so connecting is refused, and open connections are reset), then bind the same
  port again.

Requests are recognised by the first bytes of a chunk read from the client (`POST /…`,
`GET /…`): good enough for HTTP/1.1 clients that write a request's head in one go, which
is all a test needs. Each connection is two threads, one per direction.
*/

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Where a [`ChaosProxy::cut`] strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The request never reaches the server.
    Before,
    /// The request reaches the server; its answer never reaches the client.
    After,
}

/// How a connection is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// An orderly close (FIN): the client reads end-of-stream.
    Close,
    /// An abortive close (RST): the client reads "connection reset".
    Reset,
}

/// One proxied connection. The sockets close when both pump threads and the registry
/// have let go of it.
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    /// Set by a [`Cut::After`]: break the connection when the answer starts.
    doomed: Mutex<Option<How>>,
    broken: AtomicBool,
}

impl Conn {
    /// Break both sides. Shutting down the reading side wakes the pump blocked on it, so
    /// both threads end and drop the connection; with `Reset`, that last drop is the
    /// close that sends the RST (`SO_LINGER` 0).
    fn break_off(&self, how: How) {
        if self.broken.swap(true, Ordering::SeqCst) {
            return;
        }
        match how {
            How::Close => {
                let _ = self.client.shutdown(Shutdown::Both);
            }
            How::Reset => {
                set_linger_zero(&self.client);
                let _ = self.client.shutdown(Shutdown::Read);
            }
        }
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct State {
    listener: Option<Arc<TcpListener>>,
    conns: HashMap<u64, Arc<Conn>>,
    next_id: u64,
    /// Armed cuts per method, used in order.
    cuts: HashMap<String, VecDeque<(Cut, How)>>,
    /// Cuts that struck, connections broken by `break_all`/`refuse` included.
    struck: usize,
    closing: bool,
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking pump thread must not take the proxy down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running proxy. Dropping it stops listening and breaks every connection.
pub struct ChaosProxy {
    shared: Arc<Shared>,
    port: u16,
    accept: Option<JoinHandle<()>>,
}

impl ChaosProxy {
    /// Listen on `127.0.0.1:0` and forward to `upstream` (an `http://127.0.0.1:PORT` URL).
    pub fn start(upstream: &str) -> ChaosProxy {
        let addr = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream: SocketAddr = addr.parse().expect("the upstream is http://IP:PORT");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the chaos proxy");
        let port = listener.local_addr().expect("local address").port();
        let state = State { listener: Some(Arc::new(nonblocking(listener))), ..State::default() };
        let shared = Arc::new(Shared { upstream, state: Mutex::new(state) });
        let sh = shared.clone();
        let accept = thread::Builder::new()
            .name("chaos-proxy".into())
            .spawn(move || accept_loop(&sh))
            .expect("spawn the proxy's accept thread");
        ChaosProxy { shared, port, accept: Some(accept) }
    }

    /// The `api_base` to give the gateway.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Break the connection of the next `count` requests for `method`.
    pub fn cut(&self, method: &str, cut: Cut, how: How, count: usize) {
        let mut state = self.shared.lock();
        state.cuts.entry(method.to_string()).or_default().extend(std::iter::repeat_n((cut, how), count));
    }

    /// Break every open connection now. Returns how many there were.
    pub fn break_all(&self, how: How) -> usize {
        let conns: Vec<Arc<Conn>> = {
            let mut state = self.shared.lock();
            let conns: Vec<_> = state.conns.drain().map(|(_, c)| c).collect();
            state.struck += conns.len();
            conns
        };
        for conn in &conns {
            conn.break_off(how);
        }
        conns.len()
    }

    /// Stop listening (connecting is refused from now on) and reset open connections, as
    /// a server that went away.
    pub fn refuse(&self) {
        self.shared.lock().listener = None;
        self.break_all(How::Reset);
    }

    /// Listen on the same port again. Panics if the port cannot be bound within 5 s.
    pub fn listen(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            // std sets SO_REUSEADDR, so connections still in TIME_WAIT do not block this.
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(listener) => break listener,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("chaos proxy: rebinding port {}: {e}; trying again", self.port);
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("chaos proxy: cannot listen on port {} again: {e}", self.port),
            }
        };
        self.shared.lock().listener = Some(Arc::new(nonblocking(listener)));
    }

    /// How many connections were broken on purpose so far.
    pub fn struck(&self) -> usize {
        self.shared.lock().struck
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.closing = true;
            state.listener = None;
        }
        self.break_all(How::Close);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn nonblocking(listener: TcpListener) -> TcpListener {
    listener.set_nonblocking(true).expect("a non-blocking listener");
    listener
}

/// Accept while a listener is set. The listener is non-blocking and polled, because a
/// blocking `accept` could not be interrupted when [`ChaosProxy::refuse`] drops it.
fn accept_loop(shared: &Arc<Shared>) {
    loop {
        let listener = {
            let state = shared.lock();
            if state.closing {
                return;
            }
            state.listener.clone()
        };
        match listener.map(|l| l.accept()) {
            Some(Ok((client, _))) => open(shared, client),
            Some(Err(e)) if e.kind() != io::ErrorKind::WouldBlock => eprintln!("chaos proxy: accept: {e}"),
            _ => thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Connect `client` to the upstream and start pumping both ways.
fn open(shared: &Arc<Shared>, client: TcpStream) {
    let _ = client.set_nonblocking(false);
    let Ok(upstream) = TcpStream::connect(shared.upstream) else {
        // The fake is gone: the client sees its connection reset.
        set_linger_zero(&client);
        return;
    };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let conn = Arc::new(Conn { client, upstream, doomed: Mutex::new(None), broken: AtomicBool::new(false) });
    let id = {
        let mut state = shared.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.conns.insert(id, conn.clone());
        id
    };
    let (sh, c) = (shared.clone(), conn.clone());
    let _ = thread::Builder::new().name("chaos-up".into()).spawn(move || {
        client_to_upstream(&sh, &c);
        c.break_off(How::Close);
        sh.lock().conns.remove(&id);
    });
    let _ = thread::Builder::new().name("chaos-down".into()).spawn(move || {
        upstream_to_client(&conn);
        conn.break_off(How::Close);
    });
}

/// Forward requests, cutting those an armed [`Cut`] names.
fn client_to_upstream(shared: &Shared, conn: &Conn) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match (&conn.client).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if let Some((cut, how)) = request_method(chunk).and_then(|m| take_cut(shared, &m)) {
            match cut {
                Cut::Before => return conn.break_off(how),
                Cut::After => *conn.doomed.lock().unwrap_or_else(|e| e.into_inner()) = Some(how),
            }
        }
        if (&conn.upstream).write_all(chunk).is_err() {
            return;
        }
    }
}

/// Forward answers, unless the request they answer was doomed.
fn upstream_to_client(conn: &Conn) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match (&conn.upstream).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let doomed = conn.doomed.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(how) = doomed {
            return conn.break_off(how);
        }
        if (&conn.client).write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Take the next armed cut for `method`, counting it.
fn take_cut(shared: &Shared, method: &str) -> Option<(Cut, How)> {
    let mut state = shared.lock();
    let cut = state.cuts.get_mut(method)?.pop_front()?;
    state.struck += 1;
    Some(cut)
}

/// The method of an HTTP request starting in `chunk`: the path's last segment, without
/// the query (`POST /bot123:abc/sendMessage HTTP/1.1` → `sendMessage`).
fn request_method(chunk: &[u8]) -> Option<String> {
    let line = chunk.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    let verb = words.next()?;
    if !matches!(verb, "GET" | "POST" | "PUT" | "DELETE" | "HEAD") {
        return None;
    }
    let path = words.next()?.split('?').next()?;
    Some(path.rsplit('/').next()?.to_string())
}

/// Make the socket's close send an RST instead of a FIN. std keeps `set_linger` unstable,
/// so this calls `setsockopt` directly (std links libc already).
fn set_linger_zero(stream: &TcpStream) {
    #[repr(C)]
    struct Linger {
        l_onoff: i32,
        l_linger: i32,
    }
    unsafe extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const Linger, len: u32) -> i32;
    }
    // Linux values, on every architecture this runs on.
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let linger = Linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket descriptor, and a pointer to a live `struct linger` of the
    // size given.
    let rc =
        unsafe { setsockopt(stream.as_raw_fd(), SOL_SOCKET, SO_LINGER, &linger, std::mem::size_of::<Linger>() as u32) };
    if rc != 0 {
        eprintln!("chaos proxy: SO_LINGER: {}", io::Error::last_os_error());
    }
}
