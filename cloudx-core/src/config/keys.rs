//! The table of every configuration key: its type, whether it is secret, and what it does.
//!
//! The loader uses it to read environment variables with the right type and to reject unknown
//! ones; tests check it against the structs and against `docs/configuration.md`.

/// How an environment variable's text is read for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Taken as it is.
    Text,
    /// A whole number.
    Integer,
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    Bool,
    /// A comma-separated list.
    List,
    /// A duration such as `500ms`, `30s` or `5m`.
    Duration,
    /// A size such as `16MiB` or `512KiB`.
    Size,
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// The dotted key: `data_dir`, `database.url`.
    pub key: &'static str,
    /// How its environment variable is read.
    pub kind: KeyKind,
    /// Whether its value is redacted when shown.
    pub secret: bool,
    /// The default, as documented.
    pub default: &'static str,
}

impl KeySpec {
    /// The environment variable that sets this key: `CLOUDX_DATA_DIR`, `CLOUDX_DATABASE__URL`.
    pub fn env_var(&self) -> String {
        format!("CLOUDX_{}", self.key.replace('.', "__").to_ascii_uppercase())
    }
}

const fn key(key: &'static str, kind: KeyKind, default: &'static str) -> KeySpec {
    KeySpec { key, kind, secret: false, default }
}

const fn secret(key: &'static str, default: &'static str) -> KeySpec {
    KeySpec { key, kind: KeyKind::Text, secret: true, default }
}

use KeyKind::{Bool, Duration, Integer, List, Size, Text};

/// Every configuration key, in the order `docs/configuration.md` documents them.
pub const KEYS: &[KeySpec] = &[
    key("data_dir", Text, "./cloudx-data"),
    key("profile", Text, "dev"),
    secret("database.url", "SQLite at <data_dir>/cloudx.db"),
    key("database.max_connections", Integer, "16"),
    key("database.acquire_timeout", Duration, "5s"),
    key("database.busy_timeout", Duration, "5s"),
    key("database.sqlite_synchronous", Text, "normal"),
    key("storage.url", Text, "file://<data_dir>/blobs"),
    key("storage.endpoint", Text, "AWS_ENDPOINT_URL, else AWS"),
    key("storage.region", Text, "AWS_REGION, else us-east-1"),
    key("storage.access_key_id", Text, "AWS_ACCESS_KEY_ID"),
    secret("storage.secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    key("storage.max_file_size", Size, "5 GiB"),
    key("storage.project_quota_bytes", Size, "10 GiB"),
    key("storage.project_quota_files", Integer, "100000"),
    key("storage.gc_grace", Duration, "1h"),
    key("sandbox.enabled", Bool, "true"),
    key("sandbox.scratch_dir", Text, "<temp>/cloudx-sandbox-<uid>"),
    key("sandbox.wall_time", Duration, "60s"),
    key("sandbox.cpu_time", Duration, "60s"),
    key("sandbox.memory", Size, "1 GiB"),
    key("sandbox.processes", Integer, "256"),
    key("sandbox.output", Size, "1 MiB"),
    key("sandbox.file_size", Size, "1 GiB"),
    key("sandbox.open_files", Integer, "1024"),
    key("sandbox.tmpfs_size", Size, "256 MiB"),
    key("sandbox.uid_base", Integer, "1900000000"),
    key("sandbox.uid_count", Integer, "65536"),
    key("sandbox.allow_degraded", Bool, "false"),
    key("sandbox.warm", Integer, "2"),
    key("sandbox.max_wall_time", Duration, "15m"),
    key("sandbox.max_cpu_time", Duration, "15m"),
    key("sandbox.max_memory", Size, "8 GiB"),
    key("sandbox.max_processes", Integer, "4096"),
    key("sandbox.max_output", Size, "64 MiB"),
    key("sandbox.max_file_size", Size, "8 GiB"),
    key("sandbox.max_open_files", Integer, "65536"),
    key("sandbox.max_tmpfs_size", Size, "2 GiB"),
    key("sandbox.allow_loopback", Bool, "true"),
    key("sandbox.bindable", List, "[] (none)"),
    secret("auth.jwt_secret", "generated into <data_dir>/jwt-secret (dev only)"),
    key("auth.jwt_algorithm", Text, "HS256"),
    key("auth.jwt_private_key_file", Text, "generated into <data_dir>/jwt-ed25519.pem (dev only, EdDSA only)"),
    key("auth.registration", Text, "invite"),
    key("auth.issuer", Text, "cloudx"),
    key("auth.audience", Text, "cloudx"),
    key("auth.access_token_ttl", Duration, "15m"),
    key("auth.session_ttl", Duration, "30days"),
    key("auth.refresh_reuse_grace", Duration, "10s"),
    key("auth.leeway", Duration, "5s"),
    key("auth.password_min_length", Integer, "8"),
    key("auth.argon2_memory_kib", Integer, "19456"),
    key("auth.argon2_iterations", Integer, "2"),
    key("auth.argon2_parallelism", Integer, "1"),
    key("auth.hash_concurrency", Integer, "0"),
    key("auth.login_delay_after", Integer, "5"),
    key("auth.login_delay_max", Duration, "60s"),
    key("http.bind", Text, "127.0.0.1:8080"),
    key("http.cors_origins", List, "[] (none)"),
    key("http.cors_allow_credentials", Bool, "false"),
    key("http.max_body_size", Size, "16 MiB"),
    key("http.max_header_size", Size, "16 KiB"),
    key("http.header_read_timeout", Duration, "10s"),
    key("http.request_timeout", Duration, "60s"),
    key("http.max_connections", Integer, "4096"),
    key("http.shutdown_grace", Duration, "30s"),
    key("http.rate_limit_per_ip", Integer, "600"),
    key("http.rate_limit_per_user", Integer, "1200"),
    key("http.auth_rate_limit_per_ip", Integer, "30"),
    key("http.trusted_proxies", List, "[] (none)"),
    key("llm.base_url", Text, "https://api.openai.com/v1"),
    key("llm.model", Text, "gpt-4o-mini"),
    secret("llm.api_key", "none"),
    key("llm.organization", Text, "none"),
    key("llm.request_timeout", Duration, "120s"),
    key("llm.max_retries", Integer, "4"),
    key("llm.max_steps", Integer, "40"),
    key("llm.max_task_tokens", Integer, "1000000"),
    key("llm.task_timeout", Duration, "30m"),
    key("llm.context_tokens", Integer, "64000"),
    key("llm.max_tool_output", Size, "16 KiB"),
    key("worker.embedded", Bool, "true"),
    key("worker.concurrency", Integer, "4"),
    key("worker.grace", Duration, "30s"),
    key("worker.retention", Duration, "7days"),
    key("worker.webhook_hosts", List, "[] (no webhooks)"),
    key("worker.webhook_allow_private", Bool, "false"),
    secret("worker.webhook_secret", "generated into <data_dir>/webhook-secret (dev only)"),
    key("worker.metrics_bind", Text, "none"),
];

/// The key spec for a dotted key.
pub(crate) fn find(key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.key == key)
}
