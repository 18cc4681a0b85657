//! The model client against the scripted OpenAI-compatible server: streaming, tool-call
//! assembly, retries, errors and the endpoint check.

use std::time::{Duration, Instant};

use cloudx_core::agent::llm::{ChatRequest, Message, Model, ModelEvent, ModelTurn, ToolSpec};
use cloudx_core::config::{LlmConfig, Secret};
use cloudx_testkit::{DEFAULT_MODEL, ScriptedLlm, Turn};

fn config(base_url: &str) -> LlmConfig {
    let mut config = LlmConfig::default();
    config.base_url = base_url.to_owned();
    config.model = DEFAULT_MODEL.to_owned();
    config.api_key = Some(Secret::new("sk-test-key"));
    config.request_timeout = Duration::from_secs(10);
    config.max_retries = 2;
    config
}

fn model(llm: &ScriptedLlm) -> Model {
    Model::new(&config(&llm.base_url())).unwrap().with_backoff(Duration::from_millis(10))
}

fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![Message::system("be brief"), Message::user("hello")],
        tools: vec![ToolSpec {
            name: "read_file".into(),
            description: "Reads a file".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"path": {"type": "string"}}}),
        }],
        max_tokens: Some(100),
    }
}

async fn complete(model: &Model) -> (Result<ModelTurn, cloudx_core::agent::llm::ModelError>, Vec<ModelEvent>) {
    let mut events = Vec::new();
    let result = model.complete(&request(), &mut |e| events.push(e)).await;
    (result, events)
}

fn deltas(events: &[ModelEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ModelEvent::Delta(d) => Some(d.clone()),
            ModelEvent::Retry { .. } => None,
        })
        .collect()
}

fn retries(events: &[ModelEvent]) -> Vec<(u32, String, Duration)> {
    events
        .iter()
        .filter_map(|e| match e {
            ModelEvent::Retry { attempt, reason, delay } => Some((*attempt, reason.clone(), *delay)),
            ModelEvent::Delta(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn text_streams_as_deltas_in_order() {
    let llm = ScriptedLlm::start([Turn::text("The quick brown fox jumps").chunks(5)]);
    let (turn, events) = complete(&model(&llm)).await;
    let turn = turn.unwrap();
    assert_eq!(deltas(&events), ["The q", "uick ", "brown", " fox ", "jumps"]);
    assert_eq!(turn.content, "The quick brown fox jumps");
    assert_eq!(turn.finish_reason.as_deref(), Some("stop"));
    assert!(turn.tool_calls.is_empty());
    assert_eq!(turn.model, DEFAULT_MODEL);
    let usage = turn.usage.expect("usage from the final chunk");
    assert_eq!(usage.completion_tokens, 5);

    let sent = &llm.requests()[0];
    assert_eq!(sent.authorization.as_deref(), Some("Bearer sk-test-key"), "the key goes in Authorization");
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    assert_eq!(sent.body["model"], DEFAULT_MODEL);
    assert_eq!(sent.body["max_tokens"], 100);
    assert_eq!(sent.body["messages"][1], serde_json::json!({"role": "user", "content": "hello"}));
    assert_eq!(sent.body["tools"][0]["type"], "function");
    assert_eq!(sent.body["tools"][0]["function"]["name"], "read_file");
}

#[tokio::test]
async fn tool_calls_are_assembled_from_split_deltas() {
    let args = r#"{"path": "src/app/main.py", "lines": [1, 20]}"#;
    let llm = ScriptedLlm::start([Turn::tool_calls([("read_file", args), ("list_files", "{}")])
        .content("Let me look.")
        .fragment(3)]);
    let (turn, events) = complete(&model(&llm)).await;
    let turn = turn.unwrap();
    assert_eq!(deltas(&events).concat(), "Let me look.");
    assert_eq!(turn.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(turn.tool_calls.len(), 2);
    assert_eq!(turn.tool_calls[0].name, "read_file");
    assert_eq!(turn.tool_calls[0].arguments, args);
    assert_eq!(turn.tool_calls[0].id, "call_1_0");
    assert_eq!(turn.tool_calls[1].name, "list_files");
    assert_eq!(turn.tool_calls[1].arguments, "{}");
}

#[tokio::test]
async fn an_assistant_turn_with_tool_calls_and_its_results_go_back_on_the_wire() {
    let llm = ScriptedLlm::start([Turn::tool_call("read_file", r#"{"path":"a.py"}"#), Turn::text("done")]);
    let model = model(&llm);
    let mut request = request();
    let (first, _) = complete(&model).await;
    let first = first.unwrap();
    request.messages.push(Message::assistant(first.content.clone(), first.tool_calls.clone()));
    request.messages.push(Message::tool(first.tool_calls[0].id.clone(), "print('hi')"));
    let turn = model.complete(&request, &mut |_| {}).await.unwrap();
    assert_eq!(turn.content, "done");
    let sent = &llm.requests()[1].body["messages"];
    assert_eq!(sent[2]["role"], "assistant");
    assert_eq!(sent[2]["tool_calls"][0]["id"], first.tool_calls[0].id);
    assert_eq!(sent[2]["tool_calls"][0]["function"]["arguments"], r#"{"path":"a.py"}"#);
    assert_eq!(sent[3], serde_json::json!({"role": "tool", "content": "print('hi')", "tool_call_id": "call_1_0"}));
}

#[tokio::test]
async fn a_500_is_retried_and_reported() {
    let llm = ScriptedLlm::start([Turn::error(500), Turn::text("ok")]);
    let (turn, events) = complete(&model(&llm)).await;
    assert_eq!(turn.unwrap().content, "ok");
    let retries = retries(&events);
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0].0, 1);
    assert!(retries[0].1.contains("500"), "{}", retries[0].1);
    assert_eq!(retries[0].2, Duration::from_millis(10), "the first backoff");
    assert_eq!(llm.requests().len(), 2);
}

#[tokio::test]
async fn a_429_waits_as_long_as_retry_after_says() {
    let llm = ScriptedLlm::start([Turn::error(429).header("retry-after", "1"), Turn::text("ok")]);
    let start = Instant::now();
    let (turn, events) = complete(&model(&llm)).await;
    assert_eq!(turn.unwrap().content, "ok");
    assert!(start.elapsed() >= Duration::from_secs(1), "{:?}", start.elapsed());
    let retries = retries(&events);
    assert_eq!(retries[0].2, Duration::from_secs(1));
    assert!(retries[0].1.contains("429") && retries[0].1.contains("Rate limit"), "{}", retries[0].1);
}

#[tokio::test]
async fn insufficient_quota_is_not_retried() {
    let llm = ScriptedLlm::start([Turn::error(429)
        .error_type("insufficient_quota")
        .code("insufficient_quota")
        .message("You exceeded your current quota.")]);
    let (turn, events) = complete(&model(&llm)).await;
    let error = turn.unwrap_err();
    assert_eq!(error.status, Some(429));
    assert!(!error.retryable);
    assert!(error.message.contains("exceeded your current quota"), "{error}");
    assert!(retries(&events).is_empty());
}

#[tokio::test]
async fn a_cut_stream_is_retried_and_its_text_declared_void() {
    let llm = ScriptedLlm::start([Turn::text("abcdefgh").chunks(4).cut_after(3), Turn::text("whole answer")]);
    let (turn, events) = complete(&model(&llm)).await;
    assert_eq!(turn.unwrap().content, "whole answer");
    // Two deltas of the cut attempt, then the retry, then the new answer.
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            ModelEvent::Delta(d) => d.clone(),
            ModelEvent::Retry { .. } => "<retry>".into(),
        })
        .collect();
    assert_eq!(kinds, ["ab", "cd", "<retry>", "whole answer"]);
    assert!(retries(&events)[0].1.contains("cut"), "{:?}", retries(&events));
}

#[tokio::test]
async fn a_401_is_not_retried_and_says_so_clearly() {
    let llm = ScriptedLlm::start([Turn::error(401)]);
    let (turn, events) = complete(&model(&llm)).await;
    let error = turn.unwrap_err();
    assert_eq!(error.status, Some(401));
    assert!(!error.retryable);
    assert!(error.message.contains(&llm.base_url()) && error.message.contains("401"), "{error}");
    assert!(error.message.contains("Incorrect API key"), "{error}");
    assert!(!error.message.contains("sk-test-key"), "never the key: {error}");
    assert!(retries(&events).is_empty());
    assert_eq!(llm.requests().len(), 1);
}

#[tokio::test]
async fn retries_exhausted_give_the_last_error() {
    let llm = ScriptedLlm::start([Turn::error(503), Turn::error(502), Turn::error(500).message("still broken")]);
    let (turn, events) = complete(&model(&llm)).await;
    let error = turn.unwrap_err();
    assert_eq!(error.status, Some(500));
    assert!(error.retryable);
    assert!(error.message.contains("still broken") && error.message.contains("after 3 attempts"), "{error}");
    let retries = retries(&events);
    assert_eq!(retries.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(retries[1].2, Duration::from_millis(20), "the backoff doubles");
}

#[tokio::test]
async fn dropping_the_future_stops_the_stream() {
    let llm = ScriptedLlm::start([Turn::stall()]);
    let model = model(&llm);
    let outcome = tokio::time::timeout(Duration::from_millis(300), complete(&model)).await;
    assert!(outcome.is_err(), "stalled");
    for _ in 0..100 {
        if llm.disconnects() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the stream was not closed when the future was dropped");
}

#[tokio::test]
async fn no_key_sends_no_authorization_and_the_organization_goes_in_its_header() {
    let llm = ScriptedLlm::start([Turn::text("ok")]);
    let mut config = config(&llm.base_url());
    config.api_key = None;
    config.organization = Some("org-42".into());
    let model = Model::new(&config).unwrap();
    model.complete(&request(), &mut |_| {}).await.unwrap();
    let sent = &llm.requests()[0];
    assert_eq!(sent.authorization, None);
    assert_eq!(sent.organization.as_deref(), Some("org-42"));
    assert!(!format!("{model:?}").contains("sk-"), "Debug never shows a key");
}

#[tokio::test]
async fn check_passes_against_a_good_server() {
    let llm = ScriptedLlm::builder()
        .script([Turn::text("ok"), Turn::text("1 2 3 4 5").chunks(5), Turn::tool_call("add", r#"{"a":2,"b":3}"#)])
        .start();
    let check = model(&llm).check().await;
    assert!(check.ok, "{check:#?}");
    let names: Vec<&str> = check.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["models", "answer", "stream", "tool_call"]);
    assert!(check.checks[2].detail.contains("5 deltas"), "{}", check.checks[2].detail);
    assert!(check.checks[3].detail.contains("add("), "{}", check.checks[3].detail);
    let tool_request = &llm.requests()[2].body;
    assert_eq!(tool_request["tool_choice"], "required");
    assert_eq!(check.base_url, llm.base_url());
}

#[tokio::test]
async fn check_fails_clearly_against_a_closed_port() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}/v1");
    let check = Model::new(&config(&base)).unwrap().check().await;
    assert!(!check.ok);
    let models = &check.checks[0];
    assert!(!models.ok);
    assert_eq!(models.detail, format!("cannot connect to {base}: connection refused — is the server running?"),);
    assert!(check.checks[1..].iter().all(|c| !c.ok && c.detail.starts_with("not run")), "{check:#?}");
}

#[tokio::test]
async fn check_fails_when_the_server_answers_text_instead_of_calling_the_tool() {
    let llm = ScriptedLlm::builder().script([Turn::text("ok"), Turn::text("1 2 3"), Turn::text("2 + 3 = 5")]).start();
    let check = model(&llm).check().await;
    assert!(!check.ok);
    let tool = &check.checks[3];
    assert!(!tool.ok);
    assert!(tool.detail.contains("answered text instead of calling the tool"), "{}", tool.detail);
    assert!(check.checks[..3].iter().all(|c| c.ok), "{check:#?}");
}

#[tokio::test]
async fn check_names_the_models_offered_and_tolerates_a_server_without_models() {
    let llm = ScriptedLlm::builder().models(["llama3", "qwen2.5-coder"]).start();
    let mut config = config(&llm.base_url());
    config.model = "gpt-4o".into();
    let check = Model::new(&config).unwrap().check().await;
    let models = &check.checks[0];
    assert!(!models.ok);
    assert!(models.detail.contains("llama3, qwen2.5-coder") && models.detail.contains("gpt-4o"), "{}", models.detail);

    let llm = ScriptedLlm::builder()
        .without_models()
        .script([Turn::text("ok"), Turn::text("1 2"), Turn::tool_call("add", r#"{"a":2,"b":3}"#)])
        .start();
    let check = model(&llm).check().await;
    assert!(check.ok, "{check:#?}");
    assert!(check.checks[0].detail.contains("no /models endpoint"), "{}", check.checks[0].detail);
}

#[tokio::test]
async fn check_explains_a_refused_key() {
    let llm = ScriptedLlm::builder().script([]).start();
    // /models is fine, but the completions refuse the key.
    llm.push(Turn::error(401));
    llm.push(Turn::error(401));
    llm.push(Turn::error(401));
    let check = model(&llm).check().await;
    assert!(!check.ok);
    assert!(check.checks[1].detail.starts_with("the endpoint refused the API key (401)"), "{}", check.checks[1].detail);
}
