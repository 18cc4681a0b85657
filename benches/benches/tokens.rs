//! Access-token verification: the JWT check alone, and `Auth::authenticate` (the JWT check
//! plus the revocation set), on one core.
//!
//! `cargo bench -p cloudx-benches --bench tokens`

use cloudx_core::Cloudx;
use cloudx_core::auth::NewUser;
use cloudx_core::auth::audit::Client;
use cloudx_core::config::ConfigLoader;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn tokens(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigLoader::new().env([("CLOUDX_DATA_DIR", dir.path().to_str().unwrap())]).load().unwrap();
    let (cx, access) = runtime.block_on(async {
        let cx = Cloudx::connect(config).await.unwrap();
        let new = NewUser {
            email: "bench@example.com".into(),
            password: "Bench-Passphrase-4242".into(),
            display_name: "Bench".into(),
        };
        cx.auth().register(new, None, &Client::default()).await.unwrap();
        let (_, tokens) =
            cx.auth().login("bench@example.com", "Bench-Passphrase-4242", &Client::default()).await.unwrap();
        (cx, tokens.access_token)
    });
    let mut group = c.benchmark_group("access_token");
    group.throughput(Throughput::Elements(1));
    group.bench_function("authenticate", |b| b.iter(|| cx.auth().authenticate(std::hint::black_box(&access)).unwrap()));
    group.finish();
    runtime.block_on(cx.close());
}

criterion_group!(benches, tokens);
criterion_main!(benches);
