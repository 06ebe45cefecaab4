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

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

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
    while let Some((request, close)) = read_request(&mut reader)? {
        handler(&request, &mut writer)?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

/// The next request, and whether the client asked to close after it; `None` at a clean EOF.
fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<(Request, bool)>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
    let (mut length, mut chunked, mut close) = (0usize, false, false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { continue };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().map_err(|_| invalid("bad Content-Length"))?,
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let body = if chunked { read_chunked(reader)? } else { read_exact(reader, length)? };
    Ok(Some((Request { method, path, body, at: Instant::now() }, close)))
}

fn read_exact(reader: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut body = vec![0; n];
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| invalid("bad chunk size"))?;
        body.extend(read_exact(reader, size)?);
        line.clear();
        reader.read_line(&mut line)?; // the CRLF after the chunk (or after the trailers)
        if size == 0 {
            return Ok(body);
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
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
