/*!
A small HTTP/1.1 server for the test fakes: keep-alive, one thread per connection.

The fakes used tiny_http until its task pool was found to leave a connection unserved:
when two connections arrive while one pool thread waits, both are queued for that one
thread, and the second waits until some keep-alive connection closes (seconds, or for
ever). A gateway that opens several connections at once (parallel sends) then looks
stuck, and the test fails for the fake's sake. Here every connection has its own thread
from the moment it is accepted, so nothing waits for anything but the handler.

The handler runs on the connection's thread and sees each [`Request`] whole (method,
path, headers, body; read by `http_wire`). It answers with [`Request::respond`], or takes the raw socket with
[`Request::into_writer`] to write a stream or garbage itself. Requests on a connection
are served in order, as HTTP/1.1 without pipelining does.

Dropping the [`Server`] stops accepting and shuts every open connection down, so a
handler blocked writing, and a connection thread blocked reading, end at once.
*/

use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use super::http_wire::{Wire, read_request};

/// One request, read whole, with the connection to answer on.
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    stream: TcpStream,
}

impl Request {
    /// `GET`, `POST`, …
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request target: the path with its query string.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossily decoded).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Answer with `status`, `headers` and `body` (a `Content-Length` is added). A client
    /// that gave up (a stopped adapter's abandoned long poll) is no error.
    pub fn respond(mut self, status: u16, headers: &[(String, String)], body: &[u8]) {
        let mut head = format!("HTTP/1.1 {status} {}\r\nContent-Length: {}\r\n", reason(status), body.len());
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut answer = head.into_bytes();
        answer.extend_from_slice(body);
        let _ = self.stream.write_all(&answer);
    }

    /// The raw connection, to write the whole answer by hand (a chunked stream, or bytes
    /// that are not HTTP at all).
    pub fn into_writer(self) -> Box<dyn Write + Send> {
        Box::new(self.stream)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

type Handler = Arc<dyn Fn(Request) + Send + Sync>;

/// The open connections, to shut down when the server is dropped.
type Open = Arc<Mutex<HashMap<u64, TcpStream>>>;

/// A server listening on `127.0.0.1:0`.
pub struct Server {
    addr: SocketAddr,
    closing: Arc<AtomicBool>,
    open: Open,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Serve every request with `handler`; its threads are named `name`.
    pub fn start(name: &str, handler: impl Fn(Request) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake server on 127.0.0.1");
        let addr = listener.local_addr().expect("the fake server's address");
        let closing = Arc::new(AtomicBool::new(false));
        let open = Open::default();
        let handler: Handler = Arc::new(handler);
        let (flag, conns, conn_name) = (closing.clone(), open.clone(), format!("{name}-conn"));
        let accept = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || accept_loop(&listener, &flag, &conns, &conn_name, &handler))
            .expect("spawn the fake server's accept thread");
        Server { addr, closing, open, accept: Some(accept) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        // Wake the blocking `accept`, so that its thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for stream in self.open.lock().unwrap_or_else(|e| e.into_inner()).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: &TcpListener, closing: &AtomicBool, open: &Open, name: &str, handler: &Handler) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    for stream in listener.incoming() {
        if closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let Ok(tracked) = stream.try_clone() else { continue };
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        open.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tracked);
        let (handler, conns) = (handler.clone(), open.clone());
        let spawned = thread::Builder::new().name(name.to_string()).spawn(move || {
            let _ = serve_connection(stream, &handler);
            conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
        if spawned.is_err() {
            open.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
    }
}

/// Serve requests on one connection until the client closes it or asks to.
fn serve_connection(stream: TcpStream, handler: &Handler) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    while let Some(wire) = read_request(&mut reader)? {
        let close = wire.close;
        let Wire { method, target: url, headers, body, .. } = wire;
        handler(Request { method, url, headers, body, stream: stream.try_clone()? });
        if close {
            break;
        }
    }
    Ok(())
}
