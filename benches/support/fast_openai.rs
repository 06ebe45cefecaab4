/*!
A fast fake OpenAI-compatible endpoint for the agent-path benchmark, on [`super::http`].

`POST /v1/chat/completions` is answered at once with a completion whose text is
`ok: <the last user message>`, so the bench can check each chat got its own answer.
[`FastOpenAi::start_with_delay`] writes each answer that long after its request was read,
as a real model takes seconds to answer; each connection has its own thread, so answers
on different connections are computed at the same time, as a model server with free
slots would.
Anything else gets 404. Only plain (non-streamed) answers: the bench runs the default
`stream = false`.
*/

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http::{self, Handler, Request, Server};

/// A running fake endpoint; dropping it stops accepting.
pub struct FastOpenAi {
    server: Server,
    requests: Arc<AtomicU64>,
}

impl FastOpenAi {
    /// Answers at once.
    pub fn start() -> FastOpenAi {
        FastOpenAi::start_with_delay(Duration::ZERO)
    }

    /// Answers `delay` after each request was read.
    pub fn start_with_delay(delay: Duration) -> FastOpenAi {
        let requests = Arc::new(AtomicU64::new(0));
        let count = requests.clone();
        let handler: Handler = Arc::new(move |req: &Request, stream: &mut TcpStream| {
            count.fetch_add(1, Ordering::SeqCst);
            let wait = (req.at + delay).saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            handle(req, stream)
        });
        FastOpenAi { server: Server::start("fast-openai", handler), requests }
    }

    /// The `base_url` to configure: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("{}/v1", self.server.url())
    }

    /// How many requests arrived.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

fn handle(req: &Request, stream: &mut TcpStream) -> io::Result<()> {
    if req.method != "POST" || req.path != "/v1/chat/completions" {
        return http::respond(stream, 404, r#"{"error":{"message":"Not found"}}"#);
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let last = body["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or(Value::Null);
    let text = format!("ok: {}", last["content"].as_str().unwrap_or_default());
    let answer = json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "bench",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13 },
    });
    http::respond(stream, 200, &answer.to_string())
}
