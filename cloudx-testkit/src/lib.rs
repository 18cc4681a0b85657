//! Test and benchmark doubles for cloudx: a scripted OpenAI-compatible server on loopback.
//!
//! [`ScriptedLlm`] speaks the real wire format of `POST /v1/chat/completions` (a JSON
//! `chat.completion`, or server-sent `chat.completion.chunk` events with tool-call deltas split
//! across chunks as OpenAI splits them, an optional usage chunk and `data: [DONE]`) and of
//! `GET /v1/models`. Each request takes the next [`Turn`] of its script; when the script is
//! empty, a handler may compute the answer from the request; with neither, the answer is a 500
//! naming the unexpected request.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use cloudx_testkit::{ScriptedLlm, Turn};
//!
//! let llm = ScriptedLlm::start(vec![
//!     Turn::error(429).header("retry-after", "1"),
//!     Turn::text("hello there").chunks(3),
//!     Turn::tool_call("read_file", r#"{"path":"a.py"}"#).fragment(4),
//! ]);
//! let base_url = llm.base_url(); // http://127.0.0.1:PORT/v1
//! # assert!(base_url.ends_with("/v1"));
//! # });
//! ```
//!
//! Not part of any stable API: for this workspace's tests and benchmarks.

mod server;
mod turn;

pub use crate::server::{DEFAULT_MODEL, RecordedRequest, ScriptedLlm, ScriptedLlmBuilder};
pub use crate::turn::Turn;

/// Handlers for benchmarks: answers computed from each request, with send timestamps.
pub mod bench {
    use std::time::Duration;

    use crate::Turn;

    /// A handler answering every request with `tokens` timestamped text pieces, `interval` apart.
    pub fn timestamped_text(
        tokens: usize,
        interval: Duration,
    ) -> impl Fn(&serde_json::Value) -> Turn + Send + Sync + 'static {
        move |_| Turn::timestamped_tokens(tokens, interval)
    }

    /// A handler driving multi-step agent loops: when the request's last message is a tool
    /// result, it answers with timestamped text (ending the loop); otherwise with a call of
    /// `tool` with `arguments`.
    pub fn tool_then_text(
        tool: impl Into<String>,
        arguments: impl Into<String>,
        tokens: usize,
        interval: Duration,
    ) -> impl Fn(&serde_json::Value) -> Turn + Send + Sync + 'static {
        let (tool, arguments) = (tool.into(), arguments.into());
        move |request| {
            if last_message_is_tool_result(request) {
                Turn::timestamped_tokens(tokens, interval)
            } else {
                Turn::tool_call(tool.clone(), arguments.clone())
            }
        }
    }

    /// Whether the last of the request's `messages` has the role `tool`.
    pub fn last_message_is_tool_result(request: &serde_json::Value) -> bool {
        request["messages"].as_array().and_then(|m| m.last()).is_some_and(|m| m["role"] == "tool")
    }

    /// The send timestamps (nanoseconds since the UNIX epoch) carried by a text made of
    /// timestamped tokens (`t:<nanos> ` each), in order.
    pub fn parse_timestamps(text: &str) -> Vec<u128> {
        text.split_whitespace().filter_map(|t| t.strip_prefix("t:")?.parse().ok()).collect()
    }

    /// Nanoseconds since the UNIX epoch, now (the clock the timestamps use).
    pub fn now_nanos() -> u128 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    }
}
