//! The Rust side of `benches/python.py`: what `cloudx.open(...)` does from Python, done with the
//! Rust API in one process, so that the two can be compared in one run.
//!
//! Usage: embedded-baseline DATA_DIR ROUNDS MIB
//! Prints one JSON line: the median milliseconds of a scratch run of `true` (ROUNDS runs back to
//! back after a warm-up, then ROUNDS/4 one at a time, each after a pause of 50 ms, with the
//! sandbox's own wall time of those), the median MiB/s of writing and of reading a MIB-mebibyte
//! file (5 rounds, each with different content, so that nothing is deduplicated; each read the
//! second since the write), and the median of ROUNDS/4 runs of `true` with 200 MiB more resident.

use std::io::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudx_core::auth::NewUser;
use cloudx_core::auth::audit::Client;
use cloudx_core::config::ConfigLoader;
use cloudx_core::sandbox::ExecSpec;
use cloudx_core::storage::{ByteStream, NewProject, PutOptions};
use cloudx_core::{Cloudx, Principal, Role};
use futures_util::StreamExt as _;

/// The pause before each run timed one at a time: long enough for the sandboxes launched
/// ahead to be ready again (a launch takes a few milliseconds).
const PAUSE: Duration = Duration::from_millis(50);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, rounds, mib] = args.as_slice() else {
        return Err("usage: embedded-baseline DATA_DIR ROUNDS MIB".into());
    };
    let (rounds, mib): (usize, usize) = (rounds.parse()?, mib.parse()?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let config = ConfigLoader::new().flag("data_dir", "data_dir=", dir.clone()).load()?;
        let cx = Cloudx::connect(config).await?;
        let sandbox = cx.sandbox()?;
        let mut runs = Vec::with_capacity(rounds);
        for i in 0..rounds + 10 {
            let began = Instant::now();
            let outcome = sandbox.exec(ExecSpec::new(["true"])).await?;
            assert!(outcome.success());
            if i >= 10 {
                runs.push(began.elapsed().as_secs_f64() * 1000.0);
            }
        }
        // One at a time, as typed in a notebook: the sandboxes launched ahead are ready again.
        let (mut single, mut inside) = (Vec::with_capacity(rounds / 4), Vec::with_capacity(rounds / 4));
        for _ in 0..rounds / 4 {
            tokio::time::sleep(PAUSE).await;
            let began = Instant::now();
            let outcome = sandbox.exec(ExecSpec::new(["true"])).await?;
            single.push(began.elapsed().as_secs_f64() * 1000.0);
            assert!(outcome.success() && outcome.warm);
            inside.push(outcome.wall_time.as_secs_f64() * 1000.0);
        }
        let client = Client::new(None, Some("embedded-baseline"));
        let new = NewUser {
            email: "bench@example.com".into(),
            password: "correct horse battery staple".into(),
            display_name: "bench".into(),
        };
        let owner = cx.auth().add_user(&Principal::System, new, Role::Admin, &client).await?;
        let project = NewProject { name: "bench".into(), owner_id: Some(owner.id), ..NewProject::default() };
        let project = cx.storage().create_project(&Principal::System, &client, project).await?;
        let size = mib << 20;
        let (mut writes, mut reads) = (Vec::new(), Vec::new());
        for round in 0..5u8 {
            let content = Bytes::from(vec![round.wrapping_mul(37).wrapping_add(1); size]);
            let began = Instant::now();
            let pieces: Vec<std::io::Result<Bytes>> =
                (0..size).step_by(1 << 20).map(|s| Ok(content.slice(s..(s + (1 << 20)).min(size)))).collect();
            let body: ByteStream = Box::pin(futures_util::stream::iter(pieces));
            let options = PutOptions { declared_size: Some(size as u64), ..PutOptions::default() };
            cx.storage().put_file(&Principal::System, &client, project.id, "big.bin", body, options).await?;
            writes.push(mib as f64 / began.elapsed().as_secs_f64());
            // Read twice: the first from the disk (an upload bypasses the page cache), untimed,
            // as the disk of a virtual machine varies more than anything measured here.
            for timed in [false, true] {
                let began = Instant::now();
                let download = cx.storage().open_file(&Principal::System, project.id, "big.bin", None).await?;
                let mut body = download.stream(None).await?;
                let mut read = Vec::with_capacity(size);
                while let Some(chunk) = body.next().await {
                    read.extend_from_slice(&chunk?);
                }
                assert_eq!(read.len(), size);
                if timed {
                    reads.push(mib as f64 / began.elapsed().as_secs_f64());
                }
            }
        }
        // The same run with 200 MiB more of the process resident: a sandbox's processes are
        // forked from this one, and a fork copies its page tables.
        let ballast = vec![1u8; 200 << 20];
        let mut heavy = Vec::with_capacity(rounds / 4);
        for _ in 0..rounds / 4 {
            let began = Instant::now();
            assert!(sandbox.exec(ExecSpec::new(["true"])).await?.success());
            heavy.push(began.elapsed().as_secs_f64() * 1000.0);
        }
        assert_eq!(ballast.iter().map(|&b| usize::from(b)).sum::<usize>(), 200 << 20);
        writeln!(
            std::io::stdout(),
            "{}",
            serde_json::json!({
                "true_ms": median(runs),
                "true_single_ms": median(single),
                "true_single_wall_ms": median(inside),
                "true_200mib_ms": median(heavy),
                "write_mib_s": median(writes),
                "read_mib_s": median(reads),
            })
        )?;
        cx.close().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    })
}
