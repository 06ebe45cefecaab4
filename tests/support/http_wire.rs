/*!
Reading one HTTP/1.1 request off a connection: the request line, the headers, and a body
sized by `Content-Length` or sent chunked. Just what ureq sends, for the fake servers.

Shared by the test fakes' server (`tests/support/http.rs`) and the benchmark's
(`benches/support/http.rs`, which includes this file by path); each answers in its own way.
*/

use std::io::{self, BufRead, Read};

/// A request, read whole.
pub struct Wire {
    pub method: String,
    /// The request target: the path with its query string.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client asked to close the connection after the answer.
    pub close: bool,
}

impl Wire {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The next request; `None` at a clean end of the stream.
pub fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Wire>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = vec![];
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let mut wire = Wire { method, target, headers, body: vec![], close: false };
    wire.close = wire.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    wire.body = if wire.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(reader)?
    } else {
        let length =
            wire.header("content-length").map_or(Ok(0), str::parse).map_err(|_| invalid("bad Content-Length"))?;
        read_exact(reader, length)?
    };
    Ok(Some(wire))
}

fn read_exact(reader: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut body = vec![0; n];
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
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
