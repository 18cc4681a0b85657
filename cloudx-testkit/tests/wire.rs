//! The scripted server's wire format: JSON completions, SSE framing, split tool-call deltas.

use std::time::Duration;

use cloudx_testkit::{ScriptedLlm, Turn, bench};
use serde_json::{Value, json};

async fn post(llm: &ScriptedLlm, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/chat/completions", llm.base_url()))
        .bearer_auth("sk-test")
        .header("OpenAI-Organization", "org-1")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn request(stream: bool) -> Value {
    json!({"model": "m1", "stream": stream, "stream_options": {"include_usage": true},
           "messages": [{"role": "user", "content": "hi"}]})
}

/// The `data:` payloads of an SSE body, checking the framing on the way.
fn events(body: &str) -> Vec<String> {
    assert!(body.ends_with("data: [DONE]\n\n"), "the stream ends with [DONE]: {body:?}");
    body.split_terminator("\n\n")
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("event without `data: `: {e:?}")).to_owned())
        .collect()
}

#[tokio::test]
async fn json_answers_are_whole_chat_completions() {
    let llm = ScriptedLlm::start([Turn::text("hello"), Turn::tool_call("add", r#"{"a":1,"b":2}"#)]);
    let answer: Value = post(&llm, request(false)).await.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "m1");
    assert_eq!(answer["choices"][0]["message"]["content"], "hello");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert!(answer["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let answer: Value = post(&llm, request(false)).await.json().await.unwrap();
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "add");
    assert_eq!(call["function"]["arguments"], r#"{"a":1,"b":2}"#);
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");

    let recorded = llm.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(recorded[0].organization.as_deref(), Some("org-1"));
    assert_eq!(recorded[0].body["messages"][0]["content"], "hi");
}

#[tokio::test]
async fn text_streams_as_sse_chunks_then_usage_then_done() {
    let llm = ScriptedLlm::start([Turn::text("hello world").chunks(3)]);
    let response = post(&llm, request(true)).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = events(&response.text().await.unwrap());
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String =
        chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str().map(str::to_owned)).collect();
    assert_eq!(text, "hello world");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
}

#[tokio::test]
async fn tool_call_deltas_are_split_as_openai_splits_them() {
    let args = r#"{"path":"src/main.py"}"#;
    let llm = ScriptedLlm::start([Turn::tool_calls([("read_file", args), ("list_files", "{}")]).fragment(5)]);
    let events = events(&post(&llm, request(true)).await.text().await.unwrap());
    let deltas: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"].get(0).map(|c| c["delta"].clone()))
        .collect();
    let calls: Vec<&Value> = deltas.iter().filter_map(|d| d["tool_calls"].get(0)).collect();
    // The first delta of each call has index, id, type and name, with empty arguments.
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "read_file");
    assert_eq!(calls[0]["function"]["arguments"], "");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    // The later ones only the index and a fragment.
    assert_eq!(calls[1]["function"]["arguments"], r#"{"pat"#);
    assert!(calls[1].get("id").is_none() && calls[1]["function"].get("name").is_none());
    let first: String = calls
        .iter()
        .filter(|c| c["index"] == 0)
        .map(|c| c["function"]["arguments"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(first, args);
    assert_eq!(calls.iter().filter(|c| c["index"] == 1).count(), 2, "name delta and one fragment");
    let finish: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn errors_cuts_and_an_empty_script() {
    let llm =
        ScriptedLlm::start([Turn::error(429).header("retry-after", "1"), Turn::text("abcdef").chunks(6).cut_after(3)]);
    let response = post(&llm, request(true)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let response = post(&llm, request(true)).await;
    assert_eq!(response.status(), 200);
    let err = response.text().await.unwrap_err();
    assert!(err.is_body() || err.is_decode(), "{err:?}");

    let response = post(&llm, request(false)).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("unexpected request #3") && message.contains("\"hi\""), "{message}");
}

#[tokio::test]
async fn a_stall_is_seen_as_a_disconnect_when_the_client_goes() {
    let llm = ScriptedLlm::start([Turn::stall()]);
    let response = post(&llm, request(true)).await;
    let mut stream = response.bytes_stream();
    use futures_util::StreamExt as _;
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    assert!(tokio::time::timeout(Duration::from_millis(200), stream.next()).await.is_err(), "stalled");
    drop(stream);
    for _ in 0..100 {
        if llm.disconnects() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server did not notice the client leaving");
}

#[tokio::test]
async fn bench_handlers_stamp_tokens_and_alternate_tool_and_text() {
    let llm = ScriptedLlm::with_handler(bench::tool_then_text("run", "{}", 5, Duration::from_millis(2)));
    let first: Value = post(&llm, request(false)).await.json().await.unwrap();
    assert_eq!(first["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "run");
    let mut body = request(true);
    body["messages"] = json!([{"role": "user", "content": "go"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "run", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"}]);
    let before = bench::now_nanos();
    let events = events(&post(&llm, body).await.text().await.unwrap());
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    let stamps = bench::parse_timestamps(&text);
    assert_eq!(stamps.len(), 5);
    assert!(stamps.windows(2).all(|w| w[0] < w[1]) && stamps[0] >= before);
}

#[tokio::test]
async fn each_request_records_when_it_came_and_when_its_answer_ended() {
    let llm = ScriptedLlm::start([
        Turn::timestamped_tokens(3, Duration::from_millis(20)),
        Turn::text("whole"),
        Turn::text("abcdef").chunks(6).cut_after(3),
    ]);
    let started = std::time::Instant::now();
    let body = post(&llm, request(true)).await.text().await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"));
    let read = std::time::Instant::now();
    let first = llm.requests()[0].clone();
    let answered = first.answered_at.expect("the streamed answer ended");
    assert!(started <= first.received_at && first.received_at <= answered && answered <= read);
    // The three tokens go 20 ms apart: the end is at least 40 ms after the start.
    assert!(answered - first.received_at >= Duration::from_millis(40), "{:?}", answered - first.received_at);

    // A JSON answer is whole at once; the next request comes after the previous answer ended.
    post(&llm, request(false)).await.text().await.unwrap();
    let second = llm.requests()[1].clone();
    assert!(second.received_at >= answered);
    assert!(second.answered_at.is_some_and(|a| a >= second.received_at));

    // A cut answer never ends.
    assert!(post(&llm, request(true)).await.text().await.is_err());
    assert_eq!(llm.requests()[2].answered_at, None);
}
