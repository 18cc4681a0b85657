//! Shared by `agent-bench` and `agent-load`: percentiles, and the baseline of the streaming
//! figure (the scripted model streamed straight to concurrent SSE clients, no cloudx between).

use std::time::Duration;

use cloudx_testkit::bench::{now_nanos, parse_timestamps};
use serde_json::{Value, json};

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Count, p50, p90, p99 and max of nanosecond values, in milliseconds.
pub(crate) fn summary(values: &mut [u64]) -> Value {
    values.sort_unstable();
    let ms = |ns: u64| (ns as f64 / 1e6 * 1000.0).round() / 1000.0;
    json!({
        "count": values.len(),
        "p50_ms": ms(percentile(values, 0.50)), "p90_ms": ms(percentile(values, 0.90)),
        "p99_ms": ms(percentile(values, 0.99)), "max_ms": ms(values.last().copied().unwrap_or(0)),
    })
}

/// How late each timestamped piece of `text` arrives, now (nanoseconds; a clock step back
/// counts as 0).
pub(crate) fn latencies(text: &str, into: &mut Vec<u64>) {
    let now = now_nanos();
    into.extend(parse_timestamps(text).into_iter().map(|t| u64::try_from(now.saturating_sub(t)).unwrap_or(u64::MAX)));
}

/// `clients` concurrent streamed chat completions from the model at `base_url` (`…/v1`), read
/// as SSE: the delay of every timestamped token, at its arrival.
pub(crate) async fn sse_baseline(base_url: &str, clients: usize) -> Vec<u64> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().expect("an HTTP client");
    let url = format!("{base_url}/chat/completions");
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(clients));
    let runs: Vec<_> = (0..clients)
        .map(|i| {
            let (http, url, start) = (http.clone(), url.clone(), start.clone());
            tokio::spawn(async move {
                let body = json!({"model": "scripted-model", "stream": true,
                    "messages": [{"role": "user", "content": format!("baseline {i}")}]});
                start.wait().await;
                let mut response = http.post(url).json(&body).send().await.expect("the model answers");
                assert!(response.status().is_success(), "the model answered {}", response.status());
                let (mut buffer, mut out) = (String::new(), Vec::new());
                while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), response.chunk())
                    .await
                    .expect("no stall")
                    .expect("a chunk")
                {
                    buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
                    while let Some(end) = buffer.find("\n\n") {
                        let event: String = buffer.drain(..end + 2).collect();
                        let Some(data) = event.trim().strip_prefix("data: ") else { continue };
                        if let Ok(chunk) = serde_json::from_str::<Value>(data)
                            && let Some(text) = chunk["choices"][0]["delta"]["content"].as_str()
                        {
                            latencies(text, &mut out);
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for run in runs {
        all.extend(run.await.expect("a baseline client"));
    }
    all
}
