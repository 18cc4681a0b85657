//! The model client: streamed chat completions against any OpenAI-compatible endpoint.
//!
//! Requests go through async-openai (its request and response types, its SSE parsing), over a
//! transport of ours that replaces its built-in retry layer: cloudx retries itself so that each
//! retry is reported ([`ModelEvent::Retry`]), `Retry-After` is honoured in both of its forms,
//! and a stream cut before its end is retried like a 5xx.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls, ChatCompletionRequestAssistantMessage,
    ChatCompletionRequestAssistantMessageContent, ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestToolMessage,
    ChatCompletionRequestToolMessageContent, ChatCompletionRequestUserMessage, ChatCompletionRequestUserMessageContent,
    ChatCompletionStreamOptions, ChatCompletionTool, ChatCompletionToolChoiceOption, ChatCompletionTools,
    CreateChatCompletionRequest, FinishReason, FunctionCall, FunctionObject, ToolChoiceOptions,
};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The person the agent works for.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

/// One message of a conversation, as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text (none for an assistant message made only of tool calls).
    pub content: Option<String>,
    /// The tools an assistant message calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A system message.
    pub fn system(text: impl Into<String>) -> Self {
        Self { role: Role::System, content: Some(text.into()), tool_calls: Vec::new(), tool_call_id: None }
    }

    /// A user message.
    pub fn user(text: impl Into<String>) -> Self {
        Self { role: Role::User, content: Some(text.into()), tool_calls: Vec::new(), tool_call_id: None }
    }

    /// An assistant message: its text (if any) and the tools it calls.
    pub fn assistant(text: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        let text = text.into();
        let content = if text.is_empty() && !tool_calls.is_empty() { None } else { Some(text) };
        Self { role: Role::Assistant, content, tool_calls, tool_call_id: None }
    }

    /// The result of the tool call `call_id`.
    pub fn tool(call_id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            role: Role::Tool,
            content: Some(text.into()),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.into()),
        }
    }
}

/// A call of a tool by the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, which the tool message answering it names.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments: the raw JSON text the model sent (which may be invalid JSON).
    pub arguments: String,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Its name (letters, digits, `_` and `-`, at most 64).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// Its arguments, as a JSON Schema.
    pub parameters: serde_json::Value,
}

/// One chat completion to ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// The tools the model may call.
    pub tools: Vec<ToolSpec>,
    /// The most tokens the answer may take.
    pub max_tokens: Option<u32>,
}

/// Tokens counted by the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the request.
    pub prompt_tokens: u64,
    /// Tokens of the answer.
    pub completion_tokens: u64,
}

/// The model's whole answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelTurn {
    /// Its text (empty when it only calls tools).
    pub content: String,
    /// The tools it calls, assembled from the streamed deltas, in index order.
    pub tool_calls: Vec<ToolCall>,
    /// Why it stopped: `stop`, `length`, `tool_calls`, `content_filter`.
    pub finish_reason: Option<String>,
    /// Tokens used, when the endpoint says.
    pub usage: Option<Usage>,
    /// The model that answered, as the endpoint names it.
    pub model: String,
}

/// What happens while an answer streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelEvent {
    /// A piece of the answer's text, as it streams.
    Delta(String),
    /// The request will be sent again after `delay`; text streamed so far by this turn is void.
    Retry {
        /// 1 for the first retry.
        attempt: u32,
        /// What went wrong.
        reason: String,
        /// How long until the request is sent again.
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
}

/// A failed model request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelError {
    /// The endpoint's HTTP status, when it answered with one.
    pub status: Option<u16>,
    /// What went wrong: the endpoint, its status and error text (never the key).
    pub message: String,
    /// Whether sending the request again may succeed (the retries were used up).
    pub retryable: bool,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ModelError {}

impl ModelError {
    /// The shared kind: `RateLimited` for a 429, `Unavailable` for everything else (the model
    /// endpoint is a dependency of this service, whatever it answered).
    pub fn kind(&self) -> ErrorKind {
        match self.status {
            Some(429) => ErrorKind::RateLimited,
            _ => ErrorKind::Unavailable,
        }
    }
}

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Self {
        Error::new(e.kind(), e.message)
    }
}

/// The outcome of [`Model::check`]: can this endpoint serve the agent?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmCheck {
    /// The endpoint checked.
    pub base_url: String,
    /// The model checked.
    pub model: String,
    /// Whether every step passed.
    pub ok: bool,
    /// The steps, in order: `models`, `answer`, `stream`, `tool_call`.
    pub checks: Vec<LlmCheckStep>,
}

/// One step of an [`LlmCheck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmCheckStep {
    /// `models`, `answer`, `stream` or `tool_call`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was seen, or what went wrong and what to do about it.
    pub detail: String,
    /// How long it took.
    pub elapsed_ms: u64,
}

/// The longest backoff between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured; an endpoint asking for more waits this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A client of one model on one OpenAI-compatible endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Model {
    client: async_openai::Client<OpenAIConfig>,
    base_url: String,
    model: String,
    max_retries: u32,
    backoff: Duration,
    timeout: Duration,
    /// OpenAI itself refuses `max_tokens` for its reasoning models; other servers may not know
    /// `max_completion_tokens` yet.
    openai: bool,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// A client for the `[llm]` configuration (no I/O yet).
    ///
    /// # Errors
    /// `InvalidInput` when the API key or organisation cannot go in an HTTP header;
    /// `Internal` when the TLS backend cannot start.
    pub fn new(config: &crate::config::LlmConfig) -> crate::Result<Model> {
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        let key = config.api_key.as_ref().map(|k| k.expose()).unwrap_or("");
        if reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).is_err() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "llm.api_key contains characters an HTTP header cannot carry",
            ));
        }
        let organization = config.organization.clone().unwrap_or_default();
        if reqwest::header::HeaderValue::from_str(&organization).is_err() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "llm.organization contains characters an HTTP header cannot carry",
            ));
        }
        // Every setting comes from our configuration: the defaults of OpenAIConfig read
        // OPENAI_* variables, which the configuration has already folded in (or must not see).
        let openai_config = OpenAIConfig::new()
            .with_api_base(base_url.clone())
            .with_api_key(key)
            .with_org_id(organization)
            .with_project_id("");
        // An idle limit, not a total one: a long answer may stream for longer, as long as it
        // keeps coming.
        let http = reqwest::Client::builder()
            .read_timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::Internal, "cannot start the HTTP client for the model").with_source(e)
            })?;
        let client = async_openai::Client::with_config(openai_config).with_http_service(Transport { http });
        let openai =
            url::Url::parse(&base_url).ok().and_then(|u| u.host_str().map(|h| h == "api.openai.com")) == Some(true);
        Ok(Model {
            client,
            base_url,
            model: config.model.clone(),
            max_retries: config.max_retries,
            backoff: Duration::from_millis(500),
            timeout: config.request_timeout,
            openai,
        })
    }

    /// The same client with another first backoff (doubling from there, capped at 30 s); 0.5 s
    /// by default. For tests.
    #[must_use]
    pub fn with_backoff(mut self, base: Duration) -> Self {
        self.backoff = base;
        self
    }

    /// The endpoint, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The model name sent with each request.
    pub fn name(&self) -> &str {
        &self.model
    }

    /// One streamed chat completion: text deltas and retries reported through `on_event` as
    /// they happen; tool-call deltas assembled (by index) into whole [`ToolCall`]s.
    ///
    /// Retries 429s, 5xx answers, connection failures, timeouts and streams cut before their
    /// end (no finish reason) up to `max_retries` times, waiting 0.5 s, 1 s, 2 s, … (at most
    /// 30 s) or what `Retry-After` asks (seconds or an HTTP date, at most 60 s). Does not retry
    /// other 4xx answers, nor a 429 for `insufficient_quota`. Dropping the future stops the
    /// stream at once.
    ///
    /// # Errors
    /// The last failure, when it cannot be retried or the retries are used up.
    pub async fn complete(
        &self,
        request: &ChatRequest,
        on_event: &mut (dyn FnMut(ModelEvent) + Send),
    ) -> Result<ModelTurn, ModelError> {
        self.complete_with(request, None, on_event).await
    }

    async fn complete_with(
        &self,
        request: &ChatRequest,
        tool_choice: Option<ToolChoiceOptions>,
        on_event: &mut (dyn FnMut(ModelEvent) + Send),
    ) -> Result<ModelTurn, ModelError> {
        let body = self.openai_request(request, true, tool_choice);
        let mut retries = 0u32;
        loop {
            let failure = match self.stream_once(body.clone(), on_event).await {
                Ok(turn) => {
                    metrics::counter!("cloudx_llm_requests_total", "outcome" => "ok").increment(1);
                    return Ok(turn);
                }
                Err(failure) => failure,
            };
            if !failure.error.retryable || retries >= self.max_retries {
                metrics::counter!("cloudx_llm_requests_total", "outcome" => "error").increment(1);
                let mut error = failure.error;
                if retries > 0 {
                    error.message = format!("{} (after {} attempts)", error.message, retries + 1);
                }
                return Err(error);
            }
            retries += 1;
            let backoff = self.backoff.saturating_mul(2u32.saturating_pow(retries - 1)).min(MAX_BACKOFF);
            let delay = failure.retry_after.map_or(backoff, |d| d.min(MAX_RETRY_AFTER));
            metrics::counter!("cloudx_llm_retries_total").increment(1);
            tracing::debug!(attempt = retries, delay_ms = delay.as_millis() as u64, reason = %failure.error.message, "retrying the model request");
            on_event(ModelEvent::Retry { attempt: retries, reason: failure.error.message, delay });
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt: open the stream and read it to its end.
    async fn stream_once(
        &self,
        body: CreateChatCompletionRequest,
        on_event: &mut (dyn FnMut(ModelEvent) + Send),
    ) -> Result<ModelTurn, Failure> {
        let mut stream = self.client.chat().create_stream(body).await.map_err(|e| self.failure(e))?;
        let mut turn = ModelTurn {
            content: String::new(),
            tool_calls: Vec::new(),
            finish_reason: None,
            usage: None,
            model: String::new(),
        };
        let mut calls: BTreeMap<u32, ToolCall> = BTreeMap::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.failure(e))?;
            if turn.model.is_empty() {
                turn.model = chunk.model;
            }
            if let Some(usage) = chunk.usage {
                turn.usage = Some(Usage {
                    prompt_tokens: u64::from(usage.prompt_tokens),
                    completion_tokens: u64::from(usage.completion_tokens),
                });
            }
            for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
                if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                    turn.content.push_str(&text);
                    on_event(ModelEvent::Delta(text));
                }
                for delta in choice.delta.tool_calls.unwrap_or_default() {
                    let call = calls.entry(delta.index).or_insert_with(|| ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                    if let Some(id) = delta.id.filter(|id| !id.is_empty()) {
                        call.id = id;
                    }
                    if let Some(function) = delta.function {
                        // The name comes whole in the first delta of a call; the arguments in pieces.
                        if let Some(name) = function.name.filter(|n| !n.is_empty())
                            && call.name.is_empty()
                        {
                            call.name = name;
                        }
                        if let Some(fragment) = function.arguments {
                            call.arguments.push_str(&fragment);
                        }
                    }
                }
                if let Some(reason) = choice.finish_reason {
                    turn.finish_reason = Some(finish_reason(reason));
                }
            }
        }
        if turn.finish_reason.is_none() {
            return Err(Failure {
                error: ModelError {
                    status: None,
                    message: format!("{}: the answer's stream ended before the answer was complete", self.base_url),
                    retryable: true,
                },
                retry_after: None,
            });
        }
        turn.tool_calls = calls
            .into_iter()
            .map(|(index, mut call)| {
                if call.id.is_empty() {
                    call.id = format!("call_{index}");
                }
                call
            })
            .collect();
        if turn.model.is_empty() {
            turn.model.clone_from(&self.model);
        }
        Ok(turn)
    }

    fn openai_request(
        &self,
        request: &ChatRequest,
        stream: bool,
        tool_choice: Option<ToolChoiceOptions>,
    ) -> CreateChatCompletionRequest {
        let mut body = CreateChatCompletionRequest {
            model: self.model.clone(),
            messages: request.messages.iter().map(to_openai_message).collect(),
            ..Default::default()
        };
        if !request.tools.is_empty() {
            body.tools = Some(
                request
                    .tools
                    .iter()
                    .map(|t| {
                        ChatCompletionTools::Function(ChatCompletionTool {
                            function: FunctionObject {
                                name: t.name.clone(),
                                description: (!t.description.is_empty()).then(|| t.description.clone()),
                                parameters: Some(t.parameters.clone()),
                                strict: None,
                            },
                        })
                    })
                    .collect(),
            );
            body.tool_choice = tool_choice.map(ChatCompletionToolChoiceOption::Mode);
        }
        if let Some(max) = request.max_tokens {
            if self.openai {
                body.max_completion_tokens = Some(max);
            } else {
                #[allow(deprecated)]
                {
                    body.max_tokens = Some(max);
                }
            }
        }
        if stream {
            body.stream = Some(true);
            body.stream_options =
                Some(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None });
        }
        body
    }

    /// Classifies a failed attempt: what to tell, whether to retry, how long the endpoint
    /// asked to wait.
    fn failure(&self, error: OpenAIError) -> Failure {
        let base = &self.base_url;
        let (status, message, retryable, retry_after) = match error {
            OpenAIError::Boxed(boxed) => match boxed.downcast::<HttpFailure>() {
                Ok(http) => {
                    let HttpFailure { status, retry_after, body } = *http;
                    let api: Option<ApiErrorBody> =
                        serde_json::from_str::<ApiErrorEnvelope>(&body).ok().map(|e| e.error);
                    let quota = api.as_ref().is_some_and(|e| {
                        e.r#type.as_deref() == Some("insufficient_quota")
                            || e.code.as_deref() == Some("insufficient_quota")
                    });
                    let text = match &api {
                        Some(api) => match &api.code {
                            Some(code) if !api.message.contains(code.as_str()) => format!("{} ({code})", api.message),
                            _ => api.message.clone(),
                        },
                        None => excerpt(body.trim()),
                    };
                    let reason =
                        reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
                    let message = if text.is_empty() {
                        format!("{base} answered {status} {reason}")
                    } else {
                        format!("{base} answered {status} {reason}: {text}")
                    };
                    let retryable = (status == 429 && !quota) || status == 408 || status >= 500;
                    (Some(status), message, retryable, retry_after)
                }
                Err(other) => (None, format!("{base}: {other}"), false, None),
            },
            OpenAIError::Reqwest(e) => transport_failure(base, &e, self.timeout),
            OpenAIError::StreamError(e) => (None, format!("{base}: the answer's stream was cut: {e}"), true, None),
            OpenAIError::JSONDeserialize(e, content) => (
                None,
                format!("{base} answered something that is not an OpenAI chat completion ({e}): {}", excerpt(&content)),
                false,
                None,
            ),
            other => (None, format!("{base}: {other}"), false, None),
        };
        Failure { error: ModelError { status, message, retryable }, retry_after }
    }

    /// Checks that the endpoint can serve the agent: the model is listed, answers, streams and
    /// calls a tool. Each step is reported; none is retried.
    pub async fn check(&self) -> LlmCheck {
        let model = Model { max_retries: 0, ..self.clone() };
        let mut checks = Vec::new();

        let start = Instant::now();
        let (ok, detail, reachable) = model.check_models().await;
        checks.push(step("models", ok, detail, start));

        if let Some(why) = reachable {
            for name in ["answer", "stream", "tool_call"] {
                checks.push(LlmCheckStep {
                    name: name.into(),
                    ok: false,
                    detail: format!("not run: {why}"),
                    elapsed_ms: 0,
                });
            }
        } else {
            let start = Instant::now();
            let (ok, detail) = model.check_answer().await;
            checks.push(step("answer", ok, detail, start));
            let start = Instant::now();
            let (ok, detail) = model.check_stream().await;
            checks.push(step("stream", ok, detail, start));
            let start = Instant::now();
            let (ok, detail) = model.check_tool_call().await;
            checks.push(step("tool_call", ok, detail, start));
        }
        LlmCheck { base_url: self.base_url.clone(), model: self.model.clone(), ok: checks.iter().all(|c| c.ok), checks }
    }

    /// The `models` step: (ok, detail, why the other steps cannot run).
    async fn check_models(&self) -> (bool, String, Option<String>) {
        match self.client.models().list().await {
            Ok(list) => {
                let ids: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
                if ids.contains(&self.model.as_str()) {
                    (true, format!("{} is one of the {} models offered", self.model, ids.len()), None)
                } else {
                    let mut offered = ids.iter().take(20).copied().collect::<Vec<_>>().join(", ");
                    if ids.len() > 20 {
                        offered.push_str(&format!(" and {} more", ids.len() - 20));
                    }
                    if offered.is_empty() {
                        offered = "none".into();
                    }
                    (
                        false,
                        format!("the endpoint does not offer {} (llm.model); it offers: {offered}", self.model),
                        None,
                    )
                }
            }
            Err(e) => {
                let failure = self.failure(e);
                match failure.error.status {
                    Some(404 | 405 | 501) => (
                        true,
                        "the server has no /models endpoint, so the model name could not be checked".into(),
                        None,
                    ),
                    Some(401) => {
                        let detail = self.explain(&failure.error);
                        (false, detail.clone(), Some("the endpoint refused the API key".into()))
                    }
                    Some(_) => (false, self.explain(&failure.error), None),
                    None if failure.error.message.contains("cannot connect") => {
                        (false, self.explain(&failure.error), Some("the endpoint cannot be reached".into()))
                    }
                    None => (false, self.explain(&failure.error), None),
                }
            }
        }
    }

    async fn check_answer(&self) -> (bool, String) {
        let request = ChatRequest {
            messages: vec![
                Message::system("You are a connectivity check. Answer briefly."),
                Message::user("Reply with the single word: ok"),
            ],
            tools: Vec::new(),
            max_tokens: Some(64),
        };
        match self.client.chat().create(self.openai_request(&request, false, None)).await {
            Ok(answer) => match answer.choices.into_iter().next() {
                Some(choice) => {
                    let text = choice.message.content.unwrap_or_default();
                    if text.trim().is_empty() && choice.finish_reason != Some(FinishReason::Length) {
                        (false, "the model answered with no text".into())
                    } else {
                        (true, format!("{} answered {:?}", answer.model, excerpt(text.trim())))
                    }
                }
                None => (false, "the answer has no choices".into()),
            },
            Err(e) => (false, self.explain(&self.failure(e).error)),
        }
    }

    async fn check_stream(&self) -> (bool, String) {
        let request = ChatRequest {
            messages: vec![Message::user("Count from 1 to 5, separated by spaces.")],
            tools: Vec::new(),
            max_tokens: Some(64),
        };
        let start = Instant::now();
        let mut deltas = 0usize;
        let mut first = None;
        let mut on_event = |event: ModelEvent| {
            if let ModelEvent::Delta(_) = event {
                deltas += 1;
                first.get_or_insert_with(|| start.elapsed());
            }
        };
        match self.complete(&request, &mut on_event).await {
            Ok(turn) if deltas > 0 => {
                let first = first.unwrap_or_default().as_millis();
                let reason = turn.finish_reason.unwrap_or_default();
                let usage = if turn.usage.is_some() { ", with usage" } else { ", without usage" };
                (true, format!("{deltas} deltas, the first after {first} ms, finished ({reason}){usage}"))
            }
            Ok(_) => (false, "the stream finished without any text delta".into()),
            Err(e) => (false, self.explain(&e)),
        }
    }

    async fn check_tool_call(&self) -> (bool, String) {
        let request = ChatRequest {
            messages: vec![
                Message::system("You are a connectivity check. Use the tools you are given."),
                Message::user("What is 2 + 3? Call the `add` tool to compute it."),
            ],
            tools: vec![ToolSpec {
                name: "add".into(),
                description: "Adds two integers and returns the sum.".into(),
                parameters: serde_json::json!({
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                }),
            }],
            max_tokens: Some(256),
        };
        let mut ignore = |_: ModelEvent| {};
        let mut result = self.complete_with(&request, Some(ToolChoiceOptions::Required), &mut ignore).await;
        if matches!(&result, Err(e) if e.status == Some(400)) {
            // Some servers do not know `tool_choice: required`; ask again with `auto`.
            result = self.complete_with(&request, Some(ToolChoiceOptions::Auto), &mut ignore).await;
        }
        match result {
            Ok(turn) => match turn.tool_calls.first() {
                Some(call) if call.name != "add" => {
                    (false, format!("the model called an unknown tool {:?}", call.name))
                }
                Some(call) => match serde_json::from_str::<serde_json::Value>(&call.arguments) {
                    Ok(args) if args.is_object() => {
                        (true, format!("the model called add({})", excerpt(&call.arguments)))
                    }
                    _ => (
                        false,
                        format!(
                            "the model called add with arguments that are not a JSON object: {}",
                            excerpt(&call.arguments)
                        ),
                    ),
                },
                None => (
                    false,
                    format!(
                        "the model answered text instead of calling the tool ({}): the server or model may not support tool calls",
                        excerpt(turn.content.trim())
                    ),
                ),
            },
            Err(e) => (false, self.explain(&e)),
        }
    }

    /// A failure told for a person checking the endpoint.
    fn explain(&self, error: &ModelError) -> String {
        match error.status {
            Some(401) => format!("the endpoint refused the API key (401): {}", error.message),
            Some(403) => format!("the endpoint refused access (403): {}", error.message),
            Some(404) => format!("{} (is llm.model right, and does llm.base_url end in /v1?)", error.message),
            _ => error.message.clone(),
        }
    }
}

fn step(name: &str, ok: bool, detail: String, start: Instant) -> LlmCheckStep {
    LlmCheckStep { name: name.into(), ok, detail, elapsed_ms: start.elapsed().as_millis() as u64 }
}

fn finish_reason(reason: FinishReason) -> String {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::FunctionCall => "function_call",
    }
    .to_owned()
}

fn to_openai_message(message: &Message) -> ChatCompletionRequestMessage {
    let text = message.content.clone().unwrap_or_default();
    match message.role {
        Role::System => ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
            content: ChatCompletionRequestSystemMessageContent::Text(text),
            name: None,
        }),
        Role::User => ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
            content: ChatCompletionRequestUserMessageContent::Text(text),
            name: None,
        }),
        Role::Assistant => {
            let tool_calls: Vec<ChatCompletionMessageToolCalls> = message
                .tool_calls
                .iter()
                .map(|c| {
                    ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                        id: c.id.clone(),
                        function: FunctionCall { name: c.name.clone(), arguments: c.arguments.clone() },
                    })
                })
                .collect();
            let content = match (&message.content, tool_calls.is_empty()) {
                (None, false) => None,
                _ => Some(ChatCompletionRequestAssistantMessageContent::Text(text)),
            };
            ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                content,
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                ..Default::default()
            })
        }
        Role::Tool => ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
            content: ChatCompletionRequestToolMessageContent::Text(text),
            tool_call_id: message.tool_call_id.clone().unwrap_or_default(),
        }),
    }
}

/// A failure and the wait the endpoint asked for.
struct Failure {
    error: ModelError,
    retry_after: Option<Duration>,
}

fn transport_failure(
    base: &str,
    e: &reqwest::Error,
    timeout: Duration,
) -> (Option<u16>, String, bool, Option<Duration>) {
    let cause = root_cause(e);
    if e.is_timeout() {
        let within = humantime::format_duration(timeout);
        (None, format!("{base} did not answer within {within} (llm.request_timeout)"), true, None)
    } else if e.is_connect() {
        (None, format!("cannot connect to {base}: {cause} — is the server running?"), true, None)
    } else if e.is_body() || e.is_decode() {
        (None, format!("{base}: the answer's stream was cut: {cause}"), true, None)
    } else {
        (None, format!("{base}: {cause}"), e.is_request(), None)
    }
}

/// The innermost cause, told plainly ("connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    if let Some(io) = current.downcast_ref::<std::io::Error>() {
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
            _ => {}
        }
    }
    current.to_string()
}

fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[derive(Deserialize)]
struct ApiErrorEnvelope {
    error: ApiErrorBody,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    r#type: Option<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    code: Option<String>,
}

/// Some servers send the error code as a number.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// A non-2xx answer, kept whole (status, `Retry-After`, body) for [`Model::failure`]; async-openai's
/// own error path would drop the headers.
#[derive(Debug)]
struct HttpFailure {
    status: u16,
    retry_after: Option<Duration>,
    body: String,
}

impl fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)
    }
}

impl std::error::Error for HttpFailure {}

/// `Retry-After`: delay-seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((date.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

/// The HTTP transport under async-openai: one attempt per call (the retries are ours), no
/// `Authorization` header when there is no key, and non-2xx answers turned into [`HttpFailure`].
#[derive(Clone)]
struct Transport {
    http: reqwest::Client,
}

impl tower::Service<HttpRequestFactory> for Transport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let http = self.http.clone();
        Box::pin(async move {
            let mut request = factory.build().await?;
            if request.headers().get(reqwest::header::AUTHORIZATION).is_some_and(|v| v.as_bytes() == b"Bearer ") {
                request.headers_mut().remove(reqwest::header::AUTHORIZATION);
            }
            let response = http.execute(request).await?;
            if response.status().is_success() {
                return Ok(response);
            }
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = response.text().await.unwrap_or_default();
            Err(OpenAIError::Boxed(Box::new(HttpFailure { status, retry_after, body })))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO), "a past date: now");
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let d = parse_retry_after(&later).unwrap();
        assert!(d > Duration::from_secs(28) && d <= Duration::from_secs(30), "{d:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn messages_map_to_the_openai_wire_format() {
        let call = ToolCall { id: "c1".into(), name: "read_file".into(), arguments: r#"{"path":"a"}"#.into() };
        let messages = [
            Message::system("s"),
            Message::user("u"),
            Message::assistant("", vec![call]),
            Message::tool("c1", "contents"),
        ];
        let wire: Vec<serde_json::Value> =
            messages.iter().map(|m| serde_json::to_value(to_openai_message(m)).unwrap()).collect();
        assert_eq!(wire[0], serde_json::json!({"role": "system", "content": "s"}));
        assert_eq!(wire[1], serde_json::json!({"role": "user", "content": "u"}));
        assert_eq!(
            wire[2],
            serde_json::json!({"role": "assistant", "tool_calls": [
                {"type": "function", "id": "c1", "function": {"name": "read_file", "arguments": "{\"path\":\"a\"}"}}
            ]})
        );
        assert_eq!(wire[3], serde_json::json!({"role": "tool", "content": "contents", "tool_call_id": "c1"}));
    }

    #[test]
    fn our_messages_serialize_compactly() {
        let json = serde_json::to_value(Message::user("hi")).unwrap();
        assert_eq!(json, serde_json::json!({"role": "user", "content": "hi"}));
        let back: Message = serde_json::from_value(json).unwrap();
        assert_eq!(back, Message::user("hi"));
    }
}
