/*!
A WebSocket server for the test fakes: tungstenite's server side on `127.0.0.1:0`, plain
(`ws://`) or over TLS (`wss://`, with the test certificate in `tests/support/tls/`).

Each connection is accepted and upgraded on a thread of its own, and then handed to the
test as a [`Peer`] ([`FakeWs::accept`]): the test (or a platform fake built on this one:
Discord's Gateway, Slack's Socket Mode, Mattermost's event socket) drives it frame by
frame, and can write raw bytes to play a broken server. [`FakeWs::refuse`] makes the
upgrades that follow answer with an HTTP status instead of 101 (a bad token's 401).

Dropping the [`FakeWs`] stops accepting and shuts every connection down.

The certificate files are a throwaway CA and a leaf for `127.0.0.1` and `localhost`,
valid for a hundred years, made with openssl for these tests only:
`ca.der`, `leaf.der` (signed by the CA) and `leaf.key.der` (PKCS #8, P-256).
*/

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, unbounded};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

const CA: &[u8] = include_bytes!("tls/ca.der");
const LEAF: &[u8] = include_bytes!("tls/leaf.der");
const LEAF_KEY: &[u8] = include_bytes!("tls/leaf.key.der");

/// How long an upgrade may take on the fake's side before it gives up on the client.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A stream the fake speaks WebSocket over: plain TCP or TLS.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// An HTTP answer the fake gives instead of upgrading.
#[derive(Clone)]
struct Refusal {
    status: u16,
    headers: Vec<(String, String)>,
}

/// State shared with the accepting threads.
#[derive(Default)]
struct Shared {
    refusal: Mutex<Option<Refusal>>,
    /// A clone of every accepted socket, to shut down on drop.
    sockets: Mutex<Vec<TcpStream>>,
    closing: AtomicBool,
}

pub struct FakeWs {
    addr: SocketAddr,
    tls: bool,
    peers: Receiver<Peer>,
    shared: Arc<Shared>,
}

impl FakeWs {
    /// A `ws://` server.
    pub fn start() -> FakeWs {
        FakeWs::bind(None)
    }

    /// A `wss://` server with the test certificate (trusted by [`client_tls`], by
    /// nothing else).
    pub fn start_tls() -> FakeWs {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(LEAF_KEY.to_vec()));
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(LEAF.to_vec())], key)
            .expect("the test certificate");
        FakeWs::bind(Some(Arc::new(config)))
    }

    fn bind(tls: Option<Arc<ServerConfig>>) -> FakeWs {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (tx, peers) = unbounded();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        let is_tls = tls.is_some();
        thread::spawn(move || {
            for socket in listener.incoming() {
                if accepting.closing.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(socket) = socket else { continue };
                if let Ok(clone) = socket.try_clone() {
                    accepting.sockets.lock().unwrap().push(clone);
                }
                let (tx, shared, tls) = (tx.clone(), accepting.clone(), tls.clone());
                thread::spawn(move || upgrade(socket, tls, &shared, &tx));
            }
        });
        FakeWs { addr, tls: is_tls, peers, shared }
    }

    /// The URL of `path_and_query` on this server (`/`, `/api/v4/websocket`, `/?v=10`).
    pub fn url(&self, path_and_query: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{path_and_query}", self.addr)
    }

    /// Answer the upgrades that follow with `status` and `headers` instead of 101.
    pub fn refuse(&self, status: u16, headers: &[(&str, &str)]) {
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        *self.shared.refusal.lock().unwrap() = Some(Refusal { status, headers });
    }

    /// The next upgraded connection, waiting at most `within`.
    pub fn accept(&self, within: Duration) -> Peer {
        self.peers.recv_timeout(within).expect("a WebSocket client within the deadline")
    }
}

impl Drop for FakeWs {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // Wake the accepting thread, which then sees `closing`.
        let _ = TcpStream::connect(self.addr);
        for socket in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Upgrade one connection (refusing it if asked) and hand it over.
fn upgrade(socket: TcpStream, tls: Option<Arc<ServerConfig>>, shared: &Shared, peers: &Sender<Peer>) {
    let Ok(control) = socket.try_clone() else { return };
    let _ = socket.set_read_timeout(Some(HANDSHAKE));
    let _ = socket.set_nodelay(true);
    let stream: Box<dyn Stream> = match tls {
        Some(config) => match ServerConnection::new(config) {
            Ok(conn) => Box::new(StreamOwned::new(conn, socket)),
            Err(_) => return,
        },
        None => Box::new(socket),
    };
    let refusal = shared.refusal.lock().unwrap().clone();
    let seen = Arc::new(Mutex::new((String::new(), Vec::new())));
    let record = seen.clone();
    // tungstenite's `Callback` fixes the error type; it is built once per connection.
    #[allow(clippy::result_large_err)]
    let callback = move |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let target = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
        let headers = (request.headers().iter())
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        *record.lock().unwrap() = (target, headers);
        match refusal {
            None => Ok(response),
            Some(refusal) => {
                let mut answer = tungstenite::http::Response::builder().status(refusal.status);
                for (name, value) in &refusal.headers {
                    answer = answer.header(name, value);
                }
                Err(answer.body(Some("refused".to_string())).expect("a valid refusal"))
            }
        }
    };
    let Ok(ws) = tungstenite::accept_hdr(stream, callback) else {
        // Hang up: `shared.sockets` holds a clone that would keep the connection open.
        let _ = control.shutdown(Shutdown::Both);
        return;
    };
    let (target, headers) = seen.lock().unwrap().clone();
    let _ = peers.send(Peer { ws, socket: control, target, headers });
}

/// One upgraded connection, seen from the server.
pub struct Peer {
    ws: WebSocket<Box<dyn Stream>>,
    /// The TCP socket under `ws`, for read timeouts.
    socket: TcpStream,
    target: String,
    headers: Vec<(String, String)>,
}

impl Peer {
    /// The path and query string the client asked for.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The first upgrade header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn send(&mut self, message: Message) {
        self.ws.send(message).expect("send to the client");
    }

    pub fn send_text(&mut self, text: &str) {
        self.send(Message::text(text));
    }

    /// Send a close frame with `code` and `reason`.
    pub fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        self.ws.close(Some(frame)).expect("send a close frame");
        let _ = self.ws.flush();
    }

    /// The next message from the client (pongs and pings included), waiting at most
    /// `within`; `None` when the connection ended.
    pub fn recv(&mut self, within: Duration) -> Option<Message> {
        self.socket.set_read_timeout(Some(within)).expect("set a read timeout");
        match self.ws.read() {
            Ok(message) => Some(message),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                panic!("no frame from the client within {within:?}")
            }
            Err(_) => None,
        }
    }

    /// Write `bytes` as they are (frames of a broken server).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        let stream = self.ws.get_mut();
        stream.write_all(bytes).expect("write to the client");
        stream.flush().expect("flush to the client");
    }
}

/// TLS settings for the client that trust the test CA only.
pub fn client_tls() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(CA.to_vec())).expect("the test CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
