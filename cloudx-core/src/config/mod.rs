//! `CloudxConfig`: the whole configuration as data, its sections, and validation.
//!
//! Layering (defaults < `cloudx.toml` < environment < command-line flags) lives in [`load`], the
//! table of every key with its type and documentation in [`keys`]. Validation reports every
//! problem at once, each naming the key, the bad value, where it came from and what is allowed.

mod keys;
mod load;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

pub use keys::{KEYS, KeyKind, KeySpec};
pub use load::{ConfigError, ConfigLoader, ConfigProblem, Origin};

/// The complete configuration of a cloudx instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CloudxConfig {
    /// Where embedded state lives: the SQLite database, local blobs, the generated JWT secret.
    pub data_dir: PathBuf,
    /// `dev` (default) or `prod`; `prod` refuses insecure settings.
    pub profile: Profile,
    /// The SQL database.
    pub database: DatabaseConfig,
    /// The object store holding file contents.
    pub storage: StorageConfig,
    /// Sandboxed execution.
    pub sandbox: SandboxConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// The HTTP daemon.
    pub http: HttpConfig,
    /// The OpenAI-compatible model endpoint used by the agent.
    pub llm: LlmConfig,
    /// Job workers.
    pub worker: WorkerConfig,
}

impl Default for CloudxConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./cloudx-data"),
            profile: Profile::Dev,
            database: DatabaseConfig::default(),
            storage: StorageConfig::default(),
            sandbox: SandboxConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            llm: LlmConfig::default(),
            worker: WorkerConfig::default(),
        }
    }
}

impl CloudxConfig {
    /// The embedded default configuration rooted at `data_dir` (SQLite, local blobs).
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Self { data_dir: data_dir.into(), ..Self::default() }
    }

    /// The database the configuration selects, resolving the embedded default.
    ///
    /// # Errors
    /// When `database.url` is not a supported URL.
    pub fn database_target(&self) -> Result<DatabaseTarget, String> {
        match &self.database.url {
            None => Ok(DatabaseTarget::Sqlite(self.data_dir.join("cloudx.db"))),
            Some(url) => DatabaseTarget::parse(url.expose()),
        }
    }

    /// Checks a configuration built in code (the loader runs the same checks while loading).
    ///
    /// # Errors
    /// Every problem found, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        validate(self, &mut problems);
        ConfigError::from_problems(problems)
    }

    /// The configuration rendered as TOML with every secret redacted (for `cloudx config check`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// The deployment profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Friendly defaults for one machine: generated secrets, text logs.
    #[default]
    Dev,
    /// Production: refuses insecure settings, JSON logs.
    Prod,
}

/// A secret string: never shown by `Debug`, redacted when the configuration is printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call only where the value is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str("<redacted>")
    }
}

/// The `[database]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://...`; unset means SQLite at `<data_dir>/cloudx.db`.
    pub url: Option<Secret>,
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// How long a caller waits for a free connection before the request fails as unavailable.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// SQLite only: how long a writer waits for the database lock.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// SQLite only: `normal` (WAL default) or `full`.
    pub sqlite_synchronous: SqliteSynchronous,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
            sqlite_synchronous: SqliteSynchronous::Normal,
        }
    }
}

/// SQLite's `synchronous` level under WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// Durable across a crash of cloudx; a power loss may drop the last commits (never corrupts).
    #[default]
    Normal,
    /// Every commit is fsynced: durable across power loss, slower writes.
    Full,
}

/// Which SQL database a configuration points at. `Debug` shows no password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A Postgres server (the URL as configured).
    Postgres(String),
}

impl std::fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(_) => f.debug_tuple("Postgres").field(&self.display_location()).finish(),
        }
    }
}

impl DatabaseTarget {
    /// Parses a database URL: `sqlite://PATH`, `sqlite:PATH`, `postgres://…` or `postgresql://…`.
    ///
    /// # Errors
    /// A message naming the scheme when it is not one of those.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            let path = rest.split('?').next().unwrap_or_default();
            if path.is_empty() || path == ":memory:" {
                return Err(
                    "a sqlite URL needs a file path (sqlite://PATH); in-memory databases are not supported".into()
                );
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            url::Url::parse(url).map_err(|e| format!("not a valid postgres URL: {e}"))?;
            return Ok(Self::Postgres(url.to_owned()));
        }
        let scheme = url.split(':').next().unwrap_or_default();
        Err(format!("unsupported scheme `{scheme}`: use sqlite://PATH or postgres://USER@HOST/DB"))
    }

    /// A short name for logs and `/readyz`: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// The location without credentials, safe to print.
    pub fn display_location(&self) -> String {
        match self {
            Self::Sqlite(path) => path.display().to_string(),
            Self::Postgres(url) => match url::Url::parse(url) {
                Ok(mut u) => {
                    let _ = u.set_password(None);
                    let _ = u.set_username("");
                    u.to_string()
                }
                Err(_) => "postgres://<unparsable>".into(),
            },
        }
    }
}

/// The `[storage]` section: where file contents (content-addressed blobs) live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StorageConfig {
    /// `file:///PATH`, `s3://BUCKET/PREFIX` or `memory://`; unset means `<data_dir>/blobs`.
    pub url: Option<String>,
    /// The S3-compatible endpoint (`http://127.0.0.1:9000`); unset: `AWS_ENDPOINT_URL`, else AWS.
    pub endpoint: Option<String>,
    /// The S3 region; unset: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// The S3 access key id; unset: `AWS_ACCESS_KEY_ID` (or the instance's role).
    pub access_key_id: Option<String>,
    /// The S3 secret key; unset: `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<Secret>,
    /// The largest file one upload may write.
    pub max_file_size: ByteSize,
    /// The bytes a project's current files may hold, unless an administrator sets its own.
    pub project_quota_bytes: ByteSize,
    /// The files a project may hold, unless an administrator sets its own.
    pub project_quota_files: u64,
    /// How old an unreferenced blob must be before `cloudx storage gc` deletes it.
    #[serde(with = "humantime_serde")]
    pub gc_grace: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            max_file_size: ByteSize::gib(5),
            project_quota_bytes: ByteSize::gib(10),
            project_quota_files: 100_000,
            gc_grace: Duration::from_secs(3600),
        }
    }
}

/// The `[sandbox]` section: isolation and the default limits of every run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SandboxConfig {
    /// Whether untrusted code may run at all; `prod` refuses `false`.
    pub enabled: bool,
    /// Where each run's scratch folder (its root's mount point, an empty workspace) is made;
    /// unset: `<temp>/cloudx-sandbox-<uid>`.
    pub scratch_dir: Option<std::path::PathBuf>,
    /// Default wall-clock limit of a run.
    #[serde(with = "humantime_serde")]
    pub wall_time: Duration,
    /// Default CPU-time limit.
    #[serde(with = "humantime_serde")]
    pub cpu_time: Duration,
    /// Default memory limit.
    pub memory: ByteSize,
    /// Default limit of processes (and threads) at once.
    pub processes: u64,
    /// Default bytes kept of each of stdout and stderr.
    pub output: ByteSize,
    /// Default largest file a run may write.
    pub file_size: ByteSize,
    /// Default open files per process.
    pub open_files: u64,
    /// Default size of `/tmp` and of `/dev/shm`.
    pub tmpfs_size: ByteSize,
    /// When running as root: the first host uid (and gid) of the range sandboxes run as, one
    /// per concurrent run.
    pub uid_base: u32,
    /// How many uids the range holds (the most runs at once, as root).
    pub uid_count: u32,
    /// Run even when a configured protection (landlock, a memory or pids cgroup) is not
    /// available, saying so in each run's isolation record; by default such a run is refused.
    pub allow_degraded: bool,
    /// How many sandboxes to keep launched ahead of their runs, so that a run starts without
    /// waiting for namespaces and mounts (0: none).
    pub warm: usize,
    /// Ceiling of a run's wall-clock limit: no project policy or request goes above it.
    #[serde(with = "humantime_serde")]
    pub max_wall_time: Duration,
    /// Ceiling of the CPU-time limit.
    #[serde(with = "humantime_serde")]
    pub max_cpu_time: Duration,
    /// Ceiling of the memory limit.
    pub max_memory: ByteSize,
    /// Ceiling of the process limit.
    pub max_processes: u64,
    /// Ceiling of the output kept per stream.
    pub max_output: ByteSize,
    /// Ceiling of the file-size limit.
    pub max_file_size: ByteSize,
    /// Ceiling of the open-files limit.
    pub max_open_files: u64,
    /// Ceiling of the size of `/tmp` and `/dev/shm`.
    pub max_tmpfs_size: ByteSize,
    /// Whether a project policy may give its runs a loopback network.
    pub allow_loopback: bool,
    /// Host folders a project policy may bind read-only into its runs (toolchains such as
    /// `/opt/rust` or `/opt/node`): a bind must lie inside one of them.
    pub bindable: Vec<std::path::PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            scratch_dir: None,
            wall_time: Duration::from_secs(60),
            cpu_time: Duration::from_secs(60),
            memory: ByteSize::gib(1),
            processes: 256,
            output: ByteSize::mib(1),
            file_size: ByteSize::gib(1),
            open_files: 1024,
            tmpfs_size: ByteSize::mib(256),
            uid_base: 1_900_000_000,
            uid_count: 65_536,
            allow_degraded: false,
            warm: 2,
            max_wall_time: Duration::from_secs(15 * 60),
            max_cpu_time: Duration::from_secs(15 * 60),
            max_memory: ByteSize::gib(8),
            max_processes: 4096,
            max_output: ByteSize::mib(64),
            max_file_size: ByteSize::gib(8),
            max_open_files: 65_536,
            max_tmpfs_size: ByteSize::gib(2),
            allow_loopback: true,
            bindable: Vec::new(),
        }
    }
}

/// Who may create an account once the first one (the administrator) exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Registration {
    /// Anyone who can reach the daemon.
    Open,
    /// Only with a one-time invite code from an administrator.
    Invite,
    /// Nobody: administrators add accounts (`cloudx user add`).
    Closed,
}

/// The signature algorithm of access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `auth.jwt_secret`: every node that checks tokens holds the secret.
    #[serde(rename = "HS256")]
    Hs256,
    /// Ed25519 signatures: other services can check tokens with the public key from
    /// `/.well-known/jwks.json`, without being able to make them.
    #[serde(rename = "EdDSA")]
    EdDsa,
}

/// The `[auth]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthConfig {
    /// The HS256 signing secret (at least 32 bytes). Unset in `dev`: generated into
    /// `<data_dir>/jwt-secret` (mode 0600); `prod` requires it.
    pub jwt_secret: Option<Secret>,
    /// The algorithm access tokens are signed with; only it is accepted.
    pub jwt_algorithm: JwtAlgorithm,
    /// With `EdDSA`: the Ed25519 private key, a PKCS#8 PEM file. Unset in `dev`: generated into
    /// `<data_dir>/jwt-ed25519.pem` (mode 0600); `prod` requires it.
    pub jwt_private_key_file: Option<PathBuf>,
    /// Who may register once the first account exists.
    pub registration: Registration,
    /// The `iss` claim of access tokens, checked on every token.
    pub issuer: String,
    /// The `aud` claim of access tokens, checked on every token.
    pub audience: String,
    /// How long an access token is valid.
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// How long a session (its chain of refresh tokens) lasts after login.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// How long after a refresh the same refresh token may be presented again (a client that
    /// lost the reply) and get the same answer, instead of revoking the session as a reuse.
    #[serde(with = "humantime_serde")]
    pub refresh_reuse_grace: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The shortest password accepted, in characters.
    pub password_min_length: u32,
    /// argon2id memory cost in KiB (at least 19456, the OWASP minimum).
    pub argon2_memory_kib: u32,
    /// argon2id iterations (at least 2).
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// Password hashes computed at once (each uses `argon2_memory_kib`); 0 means one per core.
    pub hash_concurrency: u32,
    /// Failed logins in a row an account is allowed before each further attempt is delayed.
    pub login_delay_after: u32,
    /// The longest delay between login attempts of an account (the delay doubles from 1 s).
    #[serde(with = "humantime_serde")]
    pub login_delay_max: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_algorithm: JwtAlgorithm::Hs256,
            jwt_private_key_file: None,
            registration: Registration::Invite,
            issuer: "cloudx".into(),
            audience: "cloudx".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            refresh_reuse_grace: Duration::from_secs(10),
            leeway: Duration::from_secs(5),
            password_min_length: 8,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hash_concurrency: 0,
            login_delay_after: 5,
            login_delay_max: Duration::from_secs(60),
        }
    }
}

/// The `[http]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HttpConfig {
    /// The address `cloudx serve` listens on.
    pub bind: String,
    /// Origins allowed by CORS (`https://app.example.com`), or `*`; empty allows none.
    pub cors_origins: Vec<String>,
    /// Whether CORS responses allow credentials; refused together with `*`.
    pub cors_allow_credentials: bool,
    /// The largest request body accepted.
    pub max_body_size: ByteSize,
    /// The largest request head (request line and headers) accepted.
    pub max_header_size: ByteSize,
    /// A client must send the whole request head within this time.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// The longest a request may take before it is answered with 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The most connections open at once; further ones wait in the kernel's backlog.
    pub max_connections: u32,
    /// On SIGTERM, how long in-flight requests have to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// API requests per minute from one client address (bursts up to the same); 0 for no limit.
    pub rate_limit_per_ip: u32,
    /// API requests per minute by one user (all their sessions and keys); 0 for no limit.
    pub rate_limit_per_user: u32,
    /// Requests per minute from one client address to the credential routes (login,
    /// register, refresh, password); 0 for no limit.
    pub auth_rate_limit_per_ip: u32,
    /// Reverse proxies whose `X-Forwarded-For` is believed for the client address.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            cors_origins: Vec::new(),
            cors_allow_credentials: false,
            max_body_size: ByteSize::mib(16),
            max_header_size: ByteSize::kib(16),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(30),
            rate_limit_per_ip: 600,
            rate_limit_per_user: 1200,
            auth_rate_limit_per_ip: 30,
            trusted_proxies: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// The parsed bind address (validated at load time).
    ///
    /// # Errors
    /// When `bind` is not `IP:PORT`.
    pub fn bind_addr(&self) -> Result<SocketAddr, String> {
        self.bind.parse().map_err(|_| {
            format!("`{}` is not an address of the form IP:PORT, such as 127.0.0.1:8080 or [::]:8080", self.bind)
        })
    }
}

/// The `[llm]` section (`OPENAI_API_KEY` and `OPENAI_BASE_URL` are honoured too).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LlmConfig {
    /// The OpenAI-compatible endpoint, up to and including `/v1`.
    pub base_url: String,
    /// The model name sent with every request.
    pub model: String,
    /// The API key, if the endpoint needs one.
    pub api_key: Option<Secret>,
    /// The OpenAI organisation header, if any.
    pub organization: Option<String>,
    /// The longest the model endpoint may stay silent: before it answers, or between two
    /// pieces of a streamed answer.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How many times a 429 or 5xx answer (or a stream cut before its end) is retried.
    pub max_retries: u32,
    /// The most model requests one agent task may make.
    pub max_steps: u32,
    /// The most tokens (prompt and completion, as the endpoint counts them) one agent task
    /// may use.
    pub max_task_tokens: u64,
    /// The longest one agent task may take, from its start to its answer (retries and
    /// restarts included).
    #[serde(with = "humantime_serde")]
    pub task_timeout: Duration,
    /// The model's context window, in tokens: older tool output is trimmed, then older
    /// exchanges left out, to keep each request within about three quarters of it.
    pub context_tokens: u64,
    /// The most a tool's result sends back to the model (longer output is cut, keeping its
    /// start and end; a file read that large is refused with its line count).
    pub max_tool_output: ByteSize,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4o-mini".into(),
            api_key: None,
            organization: None,
            request_timeout: Duration::from_secs(120),
            max_retries: 4,
            max_steps: 40,
            max_task_tokens: 1_000_000,
            task_timeout: Duration::from_secs(30 * 60),
            context_tokens: 64_000,
            max_tool_output: ByteSize::kib(16),
        }
    }
}

/// The `[worker]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Whether `cloudx serve` runs a worker pool in-process.
    pub embedded: bool,
    /// How many jobs one worker process runs at once.
    pub concurrency: u32,
    /// On shutdown, how long running jobs may take to finish before they are cancelled and
    /// released to another worker.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How long finished jobs (and their events) are kept before workers delete them.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// The hosts a job's `callback_url` may name: `hooks.example.com`, `*.example.com` (any
    /// subdomain), or `*` (any host). Empty: no webhooks.
    pub webhook_hosts: Vec<String>,
    /// Whether webhooks may reach loopback, private, link-local and other internal addresses
    /// (refused by default, so that a webhook cannot probe the network the workers are in).
    pub webhook_allow_private: bool,
    /// The key webhooks are signed with (HMAC-SHA256, at least 32 bytes). Unset in `dev`:
    /// generated into `<data_dir>/webhook-secret`; `prod` requires it when webhooks are on.
    pub webhook_secret: Option<Secret>,
    /// Where a `cloudx worker` process serves `/metrics` (IP:PORT); none by default. `cloudx
    /// serve` has its own `/metrics` on `http.bind`.
    pub metrics_bind: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            concurrency: 4,
            grace: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            webhook_hosts: Vec::new(),
            webhook_allow_private: false,
            webhook_secret: None,
            metrics_bind: None,
        }
    }
}

impl WorkerConfig {
    /// The parsed `metrics_bind` address, if one is set (validated at load time).
    ///
    /// # Errors
    /// When it is not `IP:PORT`.
    pub fn metrics_bind_addr(&self) -> Result<Option<SocketAddr>, String> {
        self.metrics_bind
            .as_deref()
            .map(|bind| {
                bind.parse().map_err(|_| {
                    format!("`{bind}` is not an address of the form IP:PORT, such as 127.0.0.1:9184 or [::]:9184")
                })
            })
            .transpose()
    }
}

/// Checks the values and their combination; every problem is reported, none stops the others.
pub(crate) fn validate(config: &CloudxConfig, problems: &mut Vec<ConfigProblem>) {
    fn value_problem(key: &str, value: &dyn std::fmt::Display, why: String) -> ConfigProblem {
        ConfigProblem::new(key, format!("`{value}`: {why}"))
    }
    if config.data_dir.as_os_str().is_empty() {
        problems.push(value_problem("data_dir", &"", "must name a folder, such as ./cloudx-data".into()));
    }
    validate_sandbox(config, problems);
    if let Some(url) = &config.database.url
        && let Err(why) = DatabaseTarget::parse(url.expose())
    {
        // The URL may hold a password: show only its scheme.
        let scheme = url.expose().split(':').next().unwrap_or_default();
        problems.push(value_problem("database.url", &format!("{scheme}:…"), why));
    }
    if config.database.max_connections == 0 {
        problems.push(value_problem("database.max_connections", &0, "must be at least 1".into()));
    }
    if let Some(url) = &config.storage.url
        && let Err(why) = check_storage_url(url)
    {
        problems.push(value_problem("storage.url", url, why));
    }
    if let Some(secret) = &config.auth.jwt_secret
        && secret.expose().len() < 32
    {
        problems.push(value_problem(
            "auth.jwt_secret",
            &"<redacted>",
            format!(
                "is {} bytes long; use at least 32 random bytes (for example `openssl rand -base64 48`)",
                secret.expose().len()
            ),
        ));
    }
    let auth = &config.auth;
    if auth.argon2_memory_kib < 19_456 {
        problems.push(value_problem(
            "auth.argon2_memory_kib",
            &auth.argon2_memory_kib,
            "must be at least 19456 (the OWASP minimum for argon2id)".into(),
        ));
    }
    if auth.argon2_iterations < 2 {
        problems.push(value_problem("auth.argon2_iterations", &auth.argon2_iterations, "must be at least 2".into()));
    }
    if !(1..=16).contains(&auth.argon2_parallelism) {
        problems.push(value_problem("auth.argon2_parallelism", &auth.argon2_parallelism, "must be 1 to 16".into()));
    }
    if !(1..=1024).contains(&auth.password_min_length) {
        problems.push(value_problem(
            "auth.password_min_length",
            &auth.password_min_length,
            "must be 1 to 1024 (the longest password accepted is 1024 bytes)".into(),
        ));
    }
    for (key, value, min, max) in [
        ("auth.access_token_ttl", auth.access_token_ttl, Duration::from_secs(10), Duration::from_secs(24 * 3600)),
        ("auth.session_ttl", auth.session_ttl, Duration::from_secs(60), Duration::from_secs(400 * 24 * 3600)),
        ("auth.refresh_reuse_grace", auth.refresh_reuse_grace, Duration::ZERO, Duration::from_secs(300)),
        ("auth.leeway", auth.leeway, Duration::ZERO, Duration::from_secs(300)),
    ] {
        if value < min || value > max {
            problems.push(value_problem(
                key,
                &humantime::format_duration(value),
                format!("must be {} to {}", humantime::format_duration(min), humantime::format_duration(max)),
            ));
        }
    }
    if auth.login_delay_max < Duration::from_secs(1) || auth.login_delay_max > Duration::from_secs(3600) {
        problems.push(value_problem(
            "auth.login_delay_max",
            &humantime::format_duration(auth.login_delay_max),
            "must be 1s to 1h".into(),
        ));
    }
    if auth.access_token_ttl >= auth.session_ttl {
        problems.push(ConfigProblem::new(
            "auth.access_token_ttl",
            "must be shorter than auth.session_ttl (access tokens are renewed within a session)",
        ));
    }
    for (key, value) in [("auth.issuer", &auth.issuer), ("auth.audience", &auth.audience)] {
        if value.trim().is_empty() {
            problems.push(value_problem(key, value, "must not be empty".into()));
        }
    }
    if let Err(why) = config.http.bind_addr() {
        problems.push(ConfigProblem::new("http.bind", why));
    }
    if let Err(why) = config.worker.metrics_bind_addr() {
        problems.push(ConfigProblem::new("worker.metrics_bind", why));
    }
    for origin in &config.http.cors_origins {
        if let Err(why) = check_origin(origin) {
            problems.push(value_problem("http.cors_origins", origin, why));
        }
    }
    for host in &config.worker.webhook_hosts {
        if let Err(why) = crate::queue::webhook::check_host_pattern(host) {
            problems.push(value_problem("worker.webhook_hosts", host, why));
        }
    }
    if let Some(secret) = &config.worker.webhook_secret
        && secret.expose().len() < 32
    {
        problems.push(ConfigProblem::new("worker.webhook_secret", "must be at least 32 bytes long"));
    }
    if config.http.cors_allow_credentials && config.http.cors_origins.iter().any(|o| o == "*") {
        problems.push(ConfigProblem::new(
            "http.cors_allow_credentials",
            "`true` together with http.cors_origins = [\"*\"] would let any web site act with a user's credentials; list the allowed origins instead",
        ));
    }
    if config.http.max_header_size.as_u64() < 8 * 1024 {
        problems.push(value_problem(
            "http.max_header_size",
            &config.http.max_header_size,
            "must be at least 8 KiB".into(),
        ));
    }
    for (key, value) in [
        ("http.header_read_timeout", config.http.header_read_timeout),
        ("http.request_timeout", config.http.request_timeout),
        ("database.acquire_timeout", config.database.acquire_timeout),
        ("llm.request_timeout", config.llm.request_timeout),
        ("llm.task_timeout", config.llm.task_timeout),
    ] {
        if value.is_zero() {
            problems.push(value_problem(key, &"0s", "must be longer than zero".into()));
        }
    }
    if config.http.max_connections == 0 {
        problems.push(value_problem("http.max_connections", &0, "must be at least 1".into()));
    }
    match url::Url::parse(&config.llm.base_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => problems.push(value_problem(
            "llm.base_url",
            &config.llm.base_url,
            "must be an http:// or https:// URL, such as http://127.0.0.1:11434/v1".into(),
        )),
    }
    if config.llm.model.trim().is_empty() {
        problems.push(value_problem("llm.model", &"", "must name a model".into()));
    }
    if config.llm.max_steps == 0 {
        problems.push(value_problem("llm.max_steps", &0, "must be at least 1".into()));
    }
    if config.llm.max_task_tokens == 0 {
        problems.push(value_problem("llm.max_task_tokens", &0, "must be at least 1".into()));
    }
    if config.llm.context_tokens < 2048 {
        problems.push(value_problem(
            "llm.context_tokens",
            &config.llm.context_tokens,
            "must be at least 2048 (the system prompt and the tools take about 1500)".into(),
        ));
    }
    if !(1024..=(4 << 20)).contains(&config.llm.max_tool_output.as_u64()) {
        problems.push(value_problem(
            "llm.max_tool_output",
            &config.llm.max_tool_output,
            "must be between 1 KiB and 4 MiB".into(),
        ));
    }
    if !(1..=1024).contains(&config.worker.concurrency) {
        problems.push(value_problem(
            "worker.concurrency",
            &config.worker.concurrency,
            "must be between 1 and 1024".into(),
        ));
    }
    if config.profile == Profile::Prod {
        validate_prod(config, problems);
    }
}

/// The sandbox's defaults must lie within its ceilings, and bindable folders be absolute and
/// apart from the data folder and the scratch folder (a project could bind them otherwise).
fn validate_sandbox(config: &CloudxConfig, problems: &mut Vec<ConfigProblem>) {
    let s = &config.sandbox;
    let mut within = |key: &str, value: String, max_key: &str, ok: bool, max: String| {
        if !ok {
            problems.push(ConfigProblem::new(
                format!("sandbox.{key}"),
                format!("`{value}` is above sandbox.{max_key} (`{max}`)"),
            ));
        }
    };
    let d = |d: Duration| humantime::format_duration(d).to_string();
    within("wall_time", d(s.wall_time), "max_wall_time", s.wall_time <= s.max_wall_time, d(s.max_wall_time));
    within("cpu_time", d(s.cpu_time), "max_cpu_time", s.cpu_time <= s.max_cpu_time, d(s.max_cpu_time));
    within("memory", s.memory.to_string(), "max_memory", s.memory <= s.max_memory, s.max_memory.to_string());
    within(
        "processes",
        s.processes.to_string(),
        "max_processes",
        s.processes <= s.max_processes,
        s.max_processes.to_string(),
    );
    within("output", s.output.to_string(), "max_output", s.output <= s.max_output, s.max_output.to_string());
    within(
        "file_size",
        s.file_size.to_string(),
        "max_file_size",
        s.file_size <= s.max_file_size,
        s.max_file_size.to_string(),
    );
    within(
        "open_files",
        s.open_files.to_string(),
        "max_open_files",
        s.open_files <= s.max_open_files,
        s.max_open_files.to_string(),
    );
    within(
        "tmpfs_size",
        s.tmpfs_size.to_string(),
        "max_tmpfs_size",
        s.tmpfs_size <= s.max_tmpfs_size,
        s.max_tmpfs_size.to_string(),
    );
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let data = absolute(&config.data_dir);
    let scratch = absolute(&s.scratch_dir.clone().unwrap_or_else(crate::sandbox::default_scratch_dir));
    for dir in &s.bindable {
        if !dir.is_absolute() || dir == std::path::Path::new("/") {
            problems.push(ConfigProblem::new(
                "sandbox.bindable",
                format!("`{}`: must be an absolute folder other than /", dir.display()),
            ));
            continue;
        }
        let dir = absolute(dir);
        for (what, other) in [("the data folder (data_dir)", &data), ("the sandbox's scratch folder", &scratch)] {
            if dir.starts_with(other) || other.starts_with(&dir) {
                problems.push(ConfigProblem::new(
                    "sandbox.bindable",
                    format!("`{}` overlaps {what} {}: projects could read it", dir.display(), other.display()),
                ));
            }
        }
    }
}

/// The settings the `prod` profile refuses, with the reason and the fix.
fn validate_prod(config: &CloudxConfig, problems: &mut Vec<ConfigProblem>) {
    if !config.worker.webhook_hosts.is_empty() && config.worker.webhook_secret.is_none() {
        problems.push(ConfigProblem::new(
            "worker.webhook_secret",
            "profile `prod` with webhooks (worker.webhook_hosts) requires an explicit signing key (CLOUDX_WORKER__WEBHOOK_SECRET): a generated one differs from node to node, and receivers could not check signatures",
        ));
    }
    if config.auth.jwt_secret.is_none() && config.auth.jwt_algorithm == JwtAlgorithm::Hs256 {
        problems.push(ConfigProblem::new(
            "auth.jwt_secret",
            "profile `prod` requires an explicit secret (CLOUDX_AUTH__JWT_SECRET): a generated one is not shared by other nodes and is lost with the data folder",
        ));
    }
    if config.auth.jwt_algorithm == JwtAlgorithm::EdDsa && config.auth.jwt_private_key_file.is_none() {
        problems.push(ConfigProblem::new(
            "auth.jwt_private_key_file",
            "profile `prod` with `auth.jwt_algorithm = \"EdDSA\"` requires a key file shared by every node (an Ed25519 PKCS#8 PEM: `openssl genpkey -algorithm ed25519`)",
        ));
    }
    if config.http.cors_origins.iter().any(|o| o == "*") {
        problems.push(ConfigProblem::new(
            "http.cors_origins",
            "profile `prod` refuses `*`: list the origins of your web front ends",
        ));
    }
    if !config.sandbox.enabled {
        problems.push(ConfigProblem::new(
            "sandbox.enabled",
            "profile `prod` refuses `false`: untrusted code would run unconfined on the host",
        ));
    }
}

fn check_storage_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url)
        .map_err(|e| format!("not a URL ({e}); use file:///PATH, s3://BUCKET/PREFIX or memory://"))?;
    match parsed.scheme() {
        "file" | "memory" => Ok(()),
        "s3" if parsed.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        "s3" => Err("an s3 URL needs a bucket: s3://BUCKET/PREFIX".into()),
        other => Err(format!("unsupported scheme `{other}`: use file:///PATH, s3://BUCKET/PREFIX or memory://")),
    }
}

fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let parsed = url::Url::parse(origin).map_err(|_| "is not an origin such as https://app.example.com".to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("an origin is http(s)://HOST[:PORT]".into());
    }
    if parsed.path() != "/" || origin.ends_with('/') || parsed.query().is_some() {
        return Err("an origin has no path, query or trailing slash: https://app.example.com".into());
    }
    Ok(())
}

/// The file that holds the generated JWT secret in a data folder.
pub(crate) fn jwt_ed25519_path(data_dir: &Path) -> PathBuf {
    data_dir.join("jwt-ed25519.pem")
}

pub(crate) fn jwt_secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join("jwt-secret")
}

#[cfg(test)]
mod tests;
