//! The load generator of the file benchmark: CLIENTS concurrent clients, each uploading a fresh
//! SIZE-byte file and downloading it back, for SECONDS; prints one JSON line of counts,
//! throughput and latency percentiles.
//!
//! Usage: `files-load BASE_URL TOKEN PROJECT_ID CLIENTS SECONDS SIZE`

use std::io::Write as _;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, token, project, clients, seconds, size] = args.as_slice() else {
        eprintln!("usage: files-load BASE_URL TOKEN PROJECT_ID CLIENTS SECONDS SIZE");
        std::process::exit(2);
    };
    let (clients, seconds, size): (usize, u64, usize) =
        (clients.parse().unwrap(), seconds.parse().unwrap(), size.parse().unwrap());
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (http, base, token, project) = (http.clone(), base.clone(), token.clone(), project.clone());
        tasks.push(tokio::spawn(async move {
            let (mut puts, mut gets, mut errors) = (Vec::new(), Vec::new(), 0u64);
            let mut body = vec![0u8; size];
            let mut n = 0u64;
            while Instant::now() < deadline {
                // Fresh content each time: nothing is deduplicated away.
                body[..8].copy_from_slice(&n.to_le_bytes());
                body[8..16].copy_from_slice(&(client as u64).to_le_bytes());
                n += 1;
                let url = format!("{base}/api/v1/projects/{project}/files/load/{client}/{}", n % 16);
                let t = Instant::now();
                let put = http.put(&url).bearer_auth(&token).body(body.clone()).send().await;
                match put {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        puts.push(t.elapsed());
                    }
                    Ok(r) => {
                        errors += 1;
                        eprintln!("PUT {}: {}", r.status(), r.text().await.unwrap_or_default());
                        continue;
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("PUT failed: {e}");
                        continue;
                    }
                }
                let t = Instant::now();
                match http.get(&url).bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(b) if b.len() == size && b[..16] == body[..16] => gets.push(t.elapsed()),
                        _ => errors += 1,
                    },
                    _ => errors += 1,
                }
            }
            (puts, gets, errors)
        }));
    }
    let (mut puts, mut gets, mut errors) = (Vec::new(), Vec::new(), 0);
    for task in tasks {
        let (p, g, e) = task.await.unwrap();
        puts.extend(p);
        gets.extend(g);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let pct = |v: &mut Vec<Duration>, q: f64| -> f64 {
        v.sort_unstable();
        if v.is_empty() { 0.0 } else { v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0 }
    };
    let mib = (puts.len() + gets.len()) as f64 * size as f64 / (1024.0 * 1024.0);
    let report = serde_json::json!({
            "clients": clients, "seconds": elapsed, "size": size,
            "puts": puts.len(), "gets": gets.len(), "errors": errors,
            "put_per_s": puts.len() as f64 / elapsed, "get_per_s": gets.len() as f64 / elapsed,
            "mib_per_s": mib / elapsed,
            "put_p50_ms": pct(&mut puts, 0.5), "put_p99_ms": pct(&mut puts, 0.99),
            "get_p50_ms": pct(&mut gets, 0.5), "get_p99_ms": pct(&mut gets, 0.99),
    });
    // The report is this tool's output.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{report}");
}
