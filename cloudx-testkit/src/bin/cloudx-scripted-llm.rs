//! `cloudx-scripted-llm`: the scripted OpenAI-compatible server in bench mode, for benchmark scripts.
//!
//! Every chat completion streams `--tokens N` timestamped text pieces `--interval-ms M` apart
//! (each `t:<nanoseconds since the UNIX epoch> `, stamped when sent). With `--tool NAME`, a
//! request whose last message is not a tool result is answered with a call of NAME (arguments
//! `--arguments JSON`, default `{}`) instead, so that agent loops take two model turns.
//! Prints the base URL on stdout, then serves until interrupted.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use cloudx_testkit::{ScriptedLlm, bench};

const USAGE: &str = "usage: cloudx-scripted-llm [--bind IP:PORT] [--tokens N] [--interval-ms M] [--tool NAME [--arguments JSON]] [--model NAME]";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "cloudx-scripted-llm: {message}\n{USAGE}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut bind: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let (mut tokens, mut interval_ms) = (20usize, 10u64);
    let (mut tool, mut arguments, mut model) = (None, "{}".to_owned(), None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return Ok(());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bind" => bind = value.parse().map_err(|_| format!("--bind: `{value}` is not IP:PORT"))?,
            "--tokens" => tokens = value.parse().map_err(|_| format!("--tokens: `{value}` is not a number"))?,
            "--interval-ms" => {
                interval_ms = value.parse().map_err(|_| format!("--interval-ms: `{value}` is not a number"))?;
            }
            "--tool" => tool = Some(value),
            "--arguments" => arguments = value,
            "--model" => model = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let interval = Duration::from_millis(interval_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let mut builder = ScriptedLlm::builder().bind(bind);
        if let Some(model) = model {
            builder = builder.models([model]);
        }
        builder = match tool {
            Some(tool) => builder.handler(bench::tool_then_text(tool, arguments, tokens, interval)),
            None => builder.handler(bench::timestamped_text(tokens, interval)),
        };
        let llm = builder.try_start().map_err(|e| format!("cannot listen on {bind}: {e}"))?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", llm.base_url());
        let _ = out.flush();
        drop(out);
        let _ = tokio::signal::ctrl_c().await;
        drop(llm);
        Ok(())
    })
}
