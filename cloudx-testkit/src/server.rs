//! The loopback server: routes, the request record, and how each [`Turn`] goes on the wire.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::turn::{Kind, Turn, split_even, split_every};

/// The model name the server reports when a request names none, and lists by default.
pub const DEFAULT_MODEL: &str = "scripted-model";

type Handler = Arc<dyn Fn(&Value) -> Turn + Send + Sync + 'static>;
type Chunk = Result<Bytes, std::io::Error>;

/// One chat-completion request as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The JSON body.
    pub body: Value,
    /// The `Authorization` header, if any (e.g. `Bearer sk-test`).
    pub authorization: Option<String>,
    /// The `OpenAI-Organization` header, if any.
    pub organization: Option<String>,
    /// When the server had the whole request (its handler started, the body read).
    pub received_at: Instant,
    /// When the server handed the last byte of its answer to the connection (a streamed
    /// answer: when its body stream ended); `None` while it streams, and for an answer cut,
    /// stalled or dropped by the client. `next.received_at - answered_at` is the client's
    /// time between two requests.
    pub answered_at: Option<Instant>,
}

struct Shared {
    script: Mutex<VecDeque<Turn>>,
    handler: Option<Handler>,
    models: Option<Vec<String>>,
    requests: Mutex<Vec<RecordedRequest>>,
    disconnects: AtomicUsize,
    shutdown: watch::Receiver<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Configures a [`ScriptedLlm`] before it starts.
#[must_use]
pub struct ScriptedLlmBuilder {
    script: Vec<Turn>,
    handler: Option<Handler>,
    models: Option<Vec<String>>,
    bind: SocketAddr,
}

impl std::fmt::Debug for ScriptedLlmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedLlmBuilder")
            .field("script", &self.script)
            .field("handler", &self.handler.is_some())
            .field("models", &self.models)
            .field("bind", &self.bind)
            .finish()
    }
}

impl ScriptedLlmBuilder {
    /// The turns answered in order, one per chat-completion request.
    pub fn script(mut self, turns: impl IntoIterator<Item = Turn>) -> Self {
        self.script.extend(turns);
        self
    }

    /// Computes the answer from the request body once the script is used up.
    pub fn handler(mut self, handler: impl Fn(&Value) -> Turn + Send + Sync + 'static) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// The model ids `GET /v1/models` lists (default: [`DEFAULT_MODEL`]).
    pub fn models<S: Into<String>>(mut self, models: impl IntoIterator<Item = S>) -> Self {
        self.models = Some(models.into_iter().map(Into::into).collect());
        self
    }

    /// Makes `GET /v1/models` answer 404, like servers without that endpoint.
    pub fn without_models(mut self) -> Self {
        self.models = None;
        self
    }

    /// The address to listen on (default `127.0.0.1:0`, a free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Binds and starts serving in a task of the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime, or when the address cannot be bound (see [`Self::try_start`]).
    pub fn start(self) -> ScriptedLlm {
        self.try_start().expect("cloudx-testkit: cannot start the scripted LLM server")
    }

    /// Binds and starts serving in a task of the current tokio runtime.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub fn try_start(self) -> std::io::Result<ScriptedLlm> {
        let listener = std::net::TcpListener::bind(self.bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (stop, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            script: Mutex::new(self.script.into()),
            handler: self.handler,
            models: self.models,
            requests: Mutex::new(Vec::new()),
            disconnects: AtomicUsize::new(0),
            shutdown: shutdown.clone(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .fallback(not_found)
            .with_state(shared.clone());
        let mut signal = shutdown;
        // No Nagle delay: an answer's last small write would otherwise wait for the client's
        // delayed ACK (up to 40 ms), which a benchmark would count as the client's time.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = signal.wait_for(|stop| *stop).await;
                })
                .await;
        });
        Ok(ScriptedLlm { shared, addr, stop })
    }
}

/// A scripted OpenAI-compatible server on loopback; it stops when dropped.
pub struct ScriptedLlm {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for ScriptedLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedLlm").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for ScriptedLlm {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl ScriptedLlm {
    /// Starts a server answering these turns in order (then 500 for any further request).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(script: impl IntoIterator<Item = Turn>) -> Self {
        Self::builder().script(script).start()
    }

    /// Starts a server answering every request through `handler`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn with_handler(handler: impl Fn(&Value) -> Turn + Send + Sync + 'static) -> Self {
        Self::builder().handler(handler).start()
    }

    /// A builder: script, handler, models listed, address.
    pub fn builder() -> ScriptedLlmBuilder {
        ScriptedLlmBuilder {
            script: Vec::new(),
            handler: None,
            models: Some(vec![DEFAULT_MODEL.to_owned()]),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL an OpenAI client takes.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Appends a turn to the script while the server runs.
    pub fn push(&self, turn: Turn) {
        lock(&self.shared.script).push_back(turn);
    }

    /// The chat-completion requests received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many turns of the script are still unused.
    pub fn remaining(&self) -> usize {
        lock(&self.shared.script).len()
    }

    /// How many responses the client dropped before they were complete (a stalled or slow
    /// stream whose request was cancelled).
    pub fn disconnects(&self) -> usize {
        self.shared.disconnects.load(Ordering::SeqCst)
    }
}

fn error_body(message: &str, error_type: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": error_type, "param": null, "code": code}})
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

async fn not_found() -> Response {
    json_response(404, &error_body("no such route on the scripted server", "invalid_request_error", None))
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    match &shared.models {
        Some(models) => {
            let data: Vec<Value> = models
                .iter()
                .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "cloudx-testkit"}))
                .collect();
            json_response(200, &json!({"object": "list", "data": data}))
        }
        None => not_found().await,
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let received_at = Instant::now();
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let message = format!("the request body is not JSON: {e}");
            return json_response(400, &error_body(&message, "invalid_request_error", None));
        }
    };
    let number = {
        let mut requests = lock(&shared.requests);
        requests.push(RecordedRequest {
            body: request.clone(),
            authorization: header(&headers, "authorization"),
            organization: header(&headers, "openai-organization"),
            received_at,
            answered_at: None,
        });
        requests.len()
    };
    let scripted = lock(&shared.script).pop_front();
    let Some(turn) = scripted.or_else(|| shared.handler.as_ref().map(|h| h(&request))) else {
        let mut excerpt = request.to_string();
        if excerpt.len() > 300 {
            let mut end = 300;
            while !excerpt.is_char_boundary(end) {
                end -= 1;
            }
            excerpt.truncate(end);
            excerpt.push('…');
        }
        let message = format!(
            "cloudx-testkit: unexpected request #{number}: the script is used up and there is no handler (request: {excerpt})"
        );
        return mark_end(&shared, number - 1, json_response(500, &error_body(&message, "server_error", None)));
    };
    let ctx = Ctx {
        id: format!("chatcmpl-scripted-{number}"),
        call_prefix: format!("call_{number}_"),
        created: (crate::bench::now_nanos() / 1_000_000_000) as u64,
        model: request["model"].as_str().unwrap_or(DEFAULT_MODEL).to_owned(),
        include_usage: request["stream_options"]["include_usage"] == true,
        prompt_tokens: prompt_tokens(&request),
    };
    let stream = request["stream"] == true;
    let mut response = respond(&shared, turn.clone(), &ctx, stream);
    for (name, value) in &turn.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            response.headers_mut().append(name, value);
        }
    }
    mark_end(&shared, number - 1, response)
}

/// Records the answer's end in the request's record: at once for a body already whole, else
/// when its stream ends (not when it errors: hyper then aborts without asking for more).
fn mark_end(shared: &Arc<Shared>, index: usize, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let mark = {
        let shared = shared.clone();
        move || {
            if let Some(r) = lock(&shared.requests).get_mut(index) {
                r.answered_at = Some(Instant::now());
            }
        }
    };
    if body.size_hint().exact().is_some() {
        mark();
        return Response::from_parts(parts, body);
    }
    let mut mark = Some(mark);
    let tail = futures_util::stream::poll_fn(move |_| {
        if let Some(mark) = mark.take() {
            mark();
        }
        Poll::Ready(None::<Result<Bytes, axum::Error>>)
    });
    Response::from_parts(parts, Body::from_stream(futures_util::StreamExt::chain(body.into_data_stream(), tail)))
}

/// A rough token count of the request's messages (four characters a token), for `usage`.
fn prompt_tokens(request: &Value) -> u64 {
    let chars: usize = request["messages"]
        .as_array()
        .map(|m| m.iter().map(|m| m["content"].as_str().map_or(0, str::len)).sum())
        .unwrap_or(0);
    (chars / 4 + 1) as u64
}

struct Ctx {
    id: String,
    call_prefix: String,
    created: u64,
    model: String,
    include_usage: bool,
    prompt_tokens: u64,
}

impl Ctx {
    fn usage(&self, completion_tokens: u64) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_scripted",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn usage_chunk(&self, completion_tokens: u64) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_scripted",
            "choices": [],
            "usage": self.usage(completion_tokens),
        })
    }

    fn completion(&self, content: Option<String>, tool_calls: Option<Vec<Value>>, finish: &str, tokens: u64) -> Value {
        let mut message = json!({"role": "assistant", "content": content, "refusal": null});
        if let Some(calls) = tool_calls {
            message["tool_calls"] = Value::Array(calls);
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_scripted",
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": self.usage(tokens),
        })
    }
}

/// One server-sent event to produce; timestamped tokens are stamped when sent.
enum Event {
    Json(Value),
    Stamped,
    Raw(String),
}

fn default_error(status: u16) -> (&'static str, &'static str, Option<&'static str>) {
    match status {
        400 => ("invalid request", "invalid_request_error", None),
        401 => ("Incorrect API key provided.", "invalid_request_error", Some("invalid_api_key")),
        403 => (
            "You are not allowed to use this model.",
            "invalid_request_error",
            Some("unsupported_country_region_territory"),
        ),
        404 => (
            "The model does not exist or you do not have access to it.",
            "invalid_request_error",
            Some("model_not_found"),
        ),
        429 => ("Rate limit reached for requests.", "requests", Some("rate_limit_exceeded")),
        500..=599 => ("The server had an error while processing your request.", "server_error", None),
        _ => ("scripted error", "invalid_request_error", None),
    }
}

fn respond(shared: &Arc<Shared>, turn: Turn, ctx: &Ctx, stream: bool) -> Response {
    let finish_override = turn.finish_reason.clone();
    let opts = turn_opts(&turn);
    match turn.kind {
        Kind::Error { status, message, error_type, code } => {
            let (m, t, c) = default_error(status);
            let body =
                error_body(message.as_deref().unwrap_or(m), error_type.as_deref().unwrap_or(t), code.as_deref().or(c));
            json_response(status, &body)
        }
        Kind::Invalid(content) if !stream => {
            body_response(shared, "application/json", vec![Event::Raw(content)], &opts, false)
        }
        Kind::Invalid(content) => {
            let events = vec![Event::Raw(format!("data: {content}\n\n")), Event::Raw("data: [DONE]\n\n".into())];
            body_response(shared, "text/event-stream", events, &opts, false)
        }
        Kind::Stall if !stream => body_response(shared, "application/json", Vec::new(), &opts, true),
        Kind::Stall => {
            let events = vec![Event::Json(ctx.chunk(json!({"role": "assistant", "content": ""}), None))];
            body_response(shared, "text/event-stream", events, &opts, true)
        }
        Kind::Text(text) if !stream => {
            let pieces = split_even(&text, turn.chunks).len() as u64;
            let finish = finish_override.as_deref().unwrap_or("stop");
            let body = ctx.completion(Some(text), None, finish, pieces).to_string();
            body_response(shared, "application/json", vec![Event::Raw(body)], &opts, false)
        }
        Kind::Timestamped { tokens, .. } if !stream => {
            let text: String = (0..tokens).map(|_| format!("t:{} ", crate::bench::now_nanos())).collect();
            let body = ctx.completion(Some(text), None, "stop", tokens as u64).to_string();
            body_response(shared, "application/json", vec![Event::Raw(body)], &opts, false)
        }
        Kind::ToolCalls { content, calls } if !stream => {
            let tool_calls = calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| {
                    json!({"id": format!("{}{i}", ctx.call_prefix), "type": "function", "function": {"name": name, "arguments": args}})
                })
                .collect();
            let finish = finish_override.as_deref().unwrap_or("tool_calls");
            let body = ctx.completion(content, Some(tool_calls), finish, calls.len() as u64).to_string();
            body_response(shared, "application/json", vec![Event::Raw(body)], &opts, false)
        }
        Kind::Text(text) => {
            let mut events = vec![Event::Json(ctx.chunk(json!({"role": "assistant", "content": ""}), None))];
            let pieces = split_even(&text, turn.chunks);
            let n = pieces.len() as u64;
            events.extend(pieces.into_iter().map(|p| Event::Json(ctx.chunk(json!({"content": p}), None))));
            finish_events(&mut events, ctx, finish_override.as_deref().unwrap_or("stop"), n);
            body_response(shared, "text/event-stream", events, &opts, false)
        }
        Kind::Timestamped { tokens, .. } => {
            let mut events = vec![Event::Json(ctx.chunk(json!({"role": "assistant", "content": ""}), None))];
            events.extend((0..tokens).map(|_| Event::Stamped));
            finish_events(&mut events, ctx, "stop", tokens as u64);
            body_response(shared, "text/event-stream", events, &opts, false)
        }
        Kind::ToolCalls { content, calls } => {
            let mut events = vec![Event::Json(ctx.chunk(json!({"role": "assistant", "content": null}), None))];
            if let Some(text) = &content {
                events.extend(
                    split_even(text, turn.chunks)
                        .into_iter()
                        .map(|p| Event::Json(ctx.chunk(json!({"content": p}), None))),
                );
            }
            let mut n = 0;
            for (i, (name, args)) in calls.iter().enumerate() {
                // As OpenAI: the first delta of a call names it (arguments empty), the next ones
                // carry only its index and a fragment of the arguments.
                let first = json!({"tool_calls": [{
                    "index": i, "id": format!("{}{i}", ctx.call_prefix), "type": "function",
                    "function": {"name": name, "arguments": ""},
                }]});
                events.push(Event::Json(ctx.chunk(first, None)));
                if !args.is_empty() {
                    for fragment in split_every(args, turn.fragment) {
                        n += 1;
                        let delta = json!({"tool_calls": [{"index": i, "function": {"arguments": fragment}}]});
                        events.push(Event::Json(ctx.chunk(delta, None)));
                    }
                }
            }
            finish_events(&mut events, ctx, finish_override.as_deref().unwrap_or("tool_calls"), n);
            body_response(shared, "text/event-stream", events, &opts, false)
        }
    }
}

fn finish_events(events: &mut Vec<Event>, ctx: &Ctx, finish: &str, tokens: u64) {
    events.push(Event::Json(ctx.chunk(json!({}), Some(finish))));
    if ctx.include_usage {
        events.push(Event::Json(ctx.usage_chunk(tokens)));
    }
    events.push(Event::Raw("data: [DONE]\n\n".into()));
}

struct Opts {
    delay: Duration,
    interval: Duration,
    cut_after: Option<usize>,
}

fn turn_opts(turn: &Turn) -> Opts {
    let interval = match turn.kind {
        Kind::Timestamped { interval, .. } => interval,
        _ => Duration::ZERO,
    };
    Opts { delay: turn.delay, interval, cut_after: turn.cut_after }
}

/// A 200 response whose body a task produces event by event, honouring delays and cuts, and
/// noticing when the client goes away.
fn body_response(shared: &Arc<Shared>, content_type: &str, events: Vec<Event>, opts: &Opts, stall: bool) -> Response {
    let (tx, rx) = mpsc::channel::<Chunk>(16);
    let shared = shared.clone();
    let (delay, interval, cut_after) = (opts.delay, opts.interval, opts.cut_after);
    // The id, time and model of stamped chunks come from the first JSON event.
    let template = events.iter().find_map(|e| match e {
        Event::Json(v) => Some(v.clone()),
        _ => None,
    });
    let sse = content_type == "text/event-stream";
    tokio::spawn(async move {
        let mut shutdown = shared.shutdown.clone();
        // `i` is also the number of events sent so far: each earlier one was sent or ended the task.
        for (i, event) in events.into_iter().enumerate() {
            let wait = match event {
                Event::Stamped => interval,
                _ if i > 0 => delay,
                _ => Duration::ZERO,
            };
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = tx.closed() => { shared.disconnects.fetch_add(1, Ordering::SeqCst); return; }
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
            let is_data_chunk = !matches!(&event, Event::Raw(r) if r.starts_with("data: [DONE]"));
            if let Some(limit) = cut_after
                && is_data_chunk
                && i >= limit
            {
                cut(&tx).await;
                return;
            }
            let bytes = match event {
                Event::Json(v) => format!("data: {v}\n\n"),
                Event::Raw(r) => r,
                Event::Stamped => {
                    let mut chunk = template.clone().unwrap_or(Value::Null);
                    chunk["choices"][0]["delta"] = json!({"content": format!("t:{} ", crate::bench::now_nanos())});
                    format!("data: {chunk}\n\n")
                }
            };
            let bytes = if !sse && cut_after.is_some() {
                // A non-streamed answer cut in the middle of its body.
                let mut half = bytes.len() / 2;
                while !bytes.is_char_boundary(half) {
                    half -= 1;
                }
                let _ = tx.send(Ok(Bytes::from(bytes[..half].to_owned()))).await;
                cut(&tx).await;
                return;
            } else {
                bytes
            };
            if tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                shared.disconnects.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        if stall {
            tokio::select! {
                () = tx.closed() => { shared.disconnects.fetch_add(1, Ordering::SeqCst); }
                _ = shutdown.wait_for(|s| *s) => {}
            }
        }
    });
    let body =
        Body::from_stream(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        ));
    let mut response = Response::new(body);
    if let Ok(value) = HeaderValue::try_from(content_type) {
        response.headers_mut().insert("content-type", value);
    }
    if sse {
        response.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
    }
    response
}

/// Drops the connection: a body error makes hyper abort it without the final chunk. It would
/// also drop what is still in its write buffer, so the chunks sent before get a moment to go out.
async fn cut(tx: &mpsc::Sender<Chunk>) {
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = tx.send(Err(std::io::Error::other("cut by the script"))).await;
}
