//! What the scripted server answers to one request: a [`Turn`] and its builder methods.

use std::time::Duration;

/// One scripted answer to one `POST /v1/chat/completions` request.
///
/// Build one with a constructor ([`Turn::text`], [`Turn::tool_call`], [`Turn::tool_calls`],
/// [`Turn::error`], [`Turn::stall`], [`Turn::invalid`], [`Turn::timestamped_tokens`]) and adjust it
/// with the builder methods. A request with `"stream": true` gets the answer as server-sent
/// events, exactly as OpenAI sends them; any other request gets one JSON `chat.completion`.
#[derive(Debug, Clone)]
pub struct Turn {
    pub(crate) kind: Kind,
    pub(crate) chunks: usize,
    pub(crate) fragment: usize,
    pub(crate) delay: Duration,
    pub(crate) cut_after: Option<usize>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) finish_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Text(String),
    ToolCalls { content: Option<String>, calls: Vec<(String, String)> },
    Error { status: u16, message: Option<String>, error_type: Option<String>, code: Option<String> },
    Stall,
    Invalid(String),
    Timestamped { tokens: usize, interval: Duration },
}

impl Turn {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            chunks: 1,
            fragment: 8,
            delay: Duration::ZERO,
            cut_after: None,
            headers: Vec::new(),
            finish_reason: None,
        }
    }

    /// A text answer (`finish_reason: "stop"`), streamed as one content piece unless
    /// [`chunks`](Self::chunks) says otherwise.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(Kind::Text(text.into()))
    }

    /// One call of the function `name` with these raw `arguments` (any text: it need not be valid
    /// JSON), `finish_reason: "tool_calls"`. Streamed, the arguments arrive in fragments of
    /// [`fragment`](Self::fragment) characters (8 by default).
    pub fn tool_call(name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self::tool_calls([(name, arguments)])
    }

    /// Several calls in one answer (parallel tool calls), as `(name, arguments)` pairs; the call
    /// ids are `call_0`, `call_1`, … prefixed by the request's number.
    pub fn tool_calls<N: Into<String>, A: Into<String>>(calls: impl IntoIterator<Item = (N, A)>) -> Self {
        Self::new(Kind::ToolCalls {
            content: None,
            calls: calls.into_iter().map(|(n, a)| (n.into(), a.into())).collect(),
        })
    }

    /// An HTTP error with an OpenAI-style body `{"error": {"message", "type", "code", "param"}}`;
    /// the message, type and code default to what OpenAI sends for that status.
    pub fn error(status: u16) -> Self {
        Self::new(Kind::Error { status, message: None, error_type: None, code: None })
    }

    /// A 200 answer whose body never comes: the response stays open (after the first, role-only
    /// chunk when streaming) until the client drops the request or the server stops. For
    /// cancellation tests; [`ScriptedLlm::disconnects`](crate::ScriptedLlm::disconnects) counts it.
    pub fn stall() -> Self {
        Self::new(Kind::Stall)
    }

    /// A 200 answer with this content instead of a completion: the raw body when not streaming,
    /// one `data: <content>` event followed by `data: [DONE]` when streaming.
    pub fn invalid(content: impl Into<String>) -> Self {
        Self::new(Kind::Invalid(content.into()))
    }

    /// `tokens` text pieces sent `interval` apart, each `t:<nanoseconds since the UNIX epoch> `
    /// stamped when the server sends it (see [`crate::bench::parse_timestamps`]).
    pub fn timestamped_tokens(tokens: usize, interval: Duration) -> Self {
        Self::new(Kind::Timestamped { tokens, interval })
    }

    /// Splits the text into `n` pieces of about equal length (streamed as `n` chunks).
    #[must_use]
    pub fn chunks(mut self, n: usize) -> Self {
        self.chunks = n.max(1);
        self
    }

    /// Splits each tool call's arguments into fragments of `chars` characters when streaming.
    #[must_use]
    pub fn fragment(mut self, chars: usize) -> Self {
        self.fragment = chars.max(1);
        self
    }

    /// Waits this long before each streamed chunk after the first.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sends only the first `n` SSE events (the role chunk counts), then drops the connection
    /// without a finish reason or `[DONE]`. A non-streamed answer is cut in the middle of its
    /// JSON body.
    #[must_use]
    pub fn cut_after(mut self, n: usize) -> Self {
        self.cut_after = Some(n);
        self
    }

    /// Adds a response header (e.g. `retry-after`).
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Text content sent before the tool calls of a tool-call answer (a model thinking aloud).
    #[must_use]
    pub fn content(mut self, text: impl Into<String>) -> Self {
        if let Kind::ToolCalls { content, .. } = &mut self.kind {
            *content = Some(text.into());
        }
        self
    }

    /// The error's message (for [`Turn::error`]).
    #[must_use]
    pub fn message(mut self, text: impl Into<String>) -> Self {
        if let Kind::Error { message, .. } = &mut self.kind {
            *message = Some(text.into());
        }
        self
    }

    /// The error's `type` (for [`Turn::error`]), e.g. `insufficient_quota`.
    #[must_use]
    pub fn error_type(mut self, text: impl Into<String>) -> Self {
        if let Kind::Error { error_type, .. } = &mut self.kind {
            *error_type = Some(text.into());
        }
        self
    }

    /// The error's `code` (for [`Turn::error`]).
    #[must_use]
    pub fn code(mut self, text: impl Into<String>) -> Self {
        if let Kind::Error { code, .. } = &mut self.kind {
            *code = Some(text.into());
        }
        self
    }

    /// Overrides the finish reason (`stop`, `length`, `tool_calls`, `content_filter`).
    #[must_use]
    pub fn finish_reason(mut self, reason: impl Into<String>) -> Self {
        self.finish_reason = Some(reason.into());
        self
    }
}

/// Splits `text` into `n` pieces of about equal length on character boundaries.
pub(crate) fn split_even(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.max(1);
    if chars.is_empty() {
        return vec![String::new()];
    }
    let size = chars.len().div_ceil(n);
    chars.chunks(size.max(1)).map(|c| c.iter().collect()).collect()
}

/// Splits `text` into fragments of `size` characters (at least one, possibly empty, fragment).
pub(crate) fn split_every(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars.chunks(size.max(1)).map(|c| c.iter().collect()).collect()
}
