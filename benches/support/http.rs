/*!
A minimal HTTP/1.1 server for the benchmark fakes: keep-alive, a thread per connection.

The test fakes (`tests/support/`) use tiny_http, which costs more per request than the
gateway does, so a benchmark against them would measure the fake. This one parses just
what ureq sends (a request line, headers, a `Content-Length` or chunked body) and writes
each answer with one `write` on a `TCP_NODELAY` socket, so a reply leaves at once.

[`Server::start`] takes a handler that sees the whole [`Request`] and writes its answer
with [`respond`]; handlers that must know when their answer left (the reconnect bench)
take the time after `respond` returns.
*/

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use super::http_wire::read_request;

/// One request, read whole.
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    /// When the last byte of the request was read.
    pub at: Instant,
}

/// Serves one request: write the answer to the stream (see [`respond`]).
pub type Handler = Arc<dyn Fn(&Request, &mut TcpStream) -> io::Result<()> + Send + Sync>;

/// A listening server on `127.0.0.1:0`. Dropping it stops accepting; connections end
/// when their client closes them (the gateway is killed before its fakes are dropped).
pub struct Server {
    addr: SocketAddr,
    closing: Arc<AtomicBool>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
}

impl Server {
    pub fn start(name: &str, handler: Handler) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake server");
        let addr = listener.local_addr().expect("local address");
        let closing = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (flag, count) = (closing.clone(), accepted.clone());
        let conn_name = format!("{name}-conn");
        thread::Builder::new()
            .name(name.to_string())
            .spawn(move || accept_loop(&listener, &flag, &count, &conn_name, &handler))
            .expect("spawn the accept thread");
        Server { addr, closing, accepted }
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        // Wake the blocking `accept` so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn accept_loop(listener: &TcpListener, closing: &AtomicBool, accepted: &AtomicU64, name: &str, handler: &Handler) {
    for stream in listener.incoming() {
        if closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        accepted.fetch_add(1, Ordering::SeqCst);
        let handler = handler.clone();
        let _ = thread::Builder::new().name(name.to_string()).spawn(move || {
            let _ = serve_connection(stream, &handler);
        });
    }
}

/// Answer requests on one connection until the client closes it.
fn serve_connection(stream: TcpStream, handler: &Handler) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(wire) = read_request(&mut reader)? {
        let request = Request { method: wire.method, path: wire.target, body: wire.body, at: Instant::now() };
        handler(&request, &mut writer)?;
        if wire.close {
            return Ok(());
        }
    }
    Ok(())
}

/// Write a JSON answer with one `write` call.
pub fn respond(stream: &mut TcpStream, status: u16, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        429 => "Too Many Requests",
        502 => "Bad Gateway",
        _ => "Status",
    };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes())
}
