use std::io::Write;

use super::*;

fn load(env: &[(&str, &str)]) -> Result<CloudxConfig, ConfigError> {
    ConfigLoader::new().env(env.iter().copied()).load()
}

fn problems(env: &[(&str, &str)]) -> Vec<ConfigProblem> {
    load(env).expect_err("configuration should be refused").problems().to_vec()
}

fn file_with(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn empty_configuration_is_the_embedded_default() {
    let config = load(&[]).unwrap();
    assert_eq!(config.data_dir, PathBuf::from("./cloudx-data"));
    assert_eq!(config.profile, Profile::Dev);
    assert_eq!(config.http.bind, "127.0.0.1:8080");
    assert_eq!(config.database_target().unwrap(), DatabaseTarget::Sqlite(PathBuf::from("./cloudx-data/cloudx.db")));
}

#[test]
fn layers_apply_in_order_defaults_file_env_flags() {
    let file = file_with(
        "data_dir = \"/from-file\"\n[http]\nbind = \"127.0.0.1:1111\"\nmax_connections = 7\n[database]\nmax_connections = 3\n",
    );
    let config = ConfigLoader::new()
        .file(file.path())
        .env([("CLOUDX_HTTP__BIND", "127.0.0.1:2222"), ("CLOUDX_DATABASE__MAX_CONNECTIONS", "9")])
        .flag("http.bind", "--bind", "127.0.0.1:3333")
        .load()
        .unwrap();
    assert_eq!(config.data_dir, PathBuf::from("/from-file"), "file over default");
    assert_eq!(config.http.max_connections, 7, "file value kept when no later layer sets it");
    assert_eq!(config.database.max_connections, 9, "env over file");
    assert_eq!(config.http.bind, "127.0.0.1:3333", "flag over env");
    assert_eq!(config.llm.model, "gpt-4o-mini", "default where nothing is set");
}

#[test]
fn cloudx_config_names_the_file_and_explicit_file_wins() {
    let env_file = file_with("data_dir = \"/env-file\"\n");
    let flag_file = file_with("data_dir = \"/flag-file\"\n");
    let env = [("CLOUDX_CONFIG", env_file.path().to_str().unwrap())];
    assert_eq!(load(&env).unwrap().data_dir, PathBuf::from("/env-file"));
    let config = ConfigLoader::new().env(env).file(flag_file.path()).load().unwrap();
    assert_eq!(config.data_dir, PathBuf::from("/flag-file"));
}

#[test]
fn default_file_is_optional_but_named_files_are_not() {
    let config = ConfigLoader::new().default_file("/nonexistent/cloudx.toml").load().unwrap();
    assert_eq!(config.profile, Profile::Dev);
    let err = ConfigLoader::new().file("/nonexistent/cloudx.toml").load().unwrap_err();
    assert_eq!(err.problems()[0].key, "/nonexistent/cloudx.toml");
    assert!(err.to_string().contains("cannot read the configuration file"), "{err}");
    let err = problems(&[("CLOUDX_CONFIG", "/nonexistent/x.toml")]);
    assert_eq!(err[0].origin, Some(Origin::Env("CLOUDX_CONFIG".into())));
}

#[test]
fn reserved_and_foreign_variables_are_ignored() {
    let env = [
        ("CLOUDX_TEST_POSTGRES_URL", "postgres://x"),
        ("CLOUDX_API_KEY", "cxk_x"),
        ("HOME", "/root"),
        ("PATH", "/bin"),
    ];
    let config = load(&env).unwrap();
    assert!(config.database.url.is_none());
}

#[test]
fn unknown_environment_variable_is_named() {
    let p = problems(&[("CLOUDX_DATABSE__URL", "postgres://x")]);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "CLOUDX_DATABSE__URL");
    assert!(p[0].message.contains("no configuration key `databse.url`"), "{}", p[0].message);
    let p = problems(&[("CLOUDX_HTTP__NOPE", "1")]);
    assert!(p[0].message.contains("`http.nope`"));
}

#[test]
fn unknown_keys_in_the_file_are_errors() {
    let file = file_with("colour = \"blue\"\n[http]\nbindd = \"x\"\n");
    let err = ConfigLoader::new().file(file.path()).load().unwrap_err();
    let text = err.to_string();
    assert!(text.contains("colour: unknown key"), "{text}");
    assert!(text.contains("unknown field `bindd`"), "{text}");
    assert_eq!(err.problems().len(), 2, "{text}");
}

#[test]
fn invalid_toml_is_reported_with_its_position() {
    let file = file_with("[http\nbind = 1\n");
    let err = ConfigLoader::new().file(file.path()).load().unwrap_err();
    assert!(err.to_string().contains("not valid TOML"), "{err}");
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn wrong_types_name_key_value_and_origin() {
    let p = problems(&[("CLOUDX_DATABASE__MAX_CONNECTIONS", "lots")]);
    assert_eq!(p[0].key, "database.max_connections");
    assert_eq!(
        p[0].to_string(),
        "database.max_connections: `lots` is not a whole number (set by CLOUDX_DATABASE__MAX_CONNECTIONS)"
    );
    let p = problems(&[("CLOUDX_SANDBOX__ENABLED", "perhaps")]);
    assert!(p[0].to_string().contains("`perhaps` is not true or false"));
    let file = file_with("[http]\nmax_connections = \"many\"\n");
    let err = ConfigLoader::new().file(file.path()).load().unwrap_err();
    let p = &err.problems()[0];
    assert_eq!(p.key, "http.max_connections");
    assert!(p.message.contains("invalid type"), "{}", p.message);
    assert_eq!(p.origin, Some(Origin::File(file.path().to_owned())));
}

#[test]
fn durations_sizes_and_enums_explain_their_forms() {
    let p = problems(&[("CLOUDX_HTTP__REQUEST_TIMEOUT", "soon")]);
    assert_eq!(p[0].key, "http.request_timeout");
    assert!(p[0].message.contains("durations look like"), "{}", p[0].message);
    let p = problems(&[("CLOUDX_HTTP__MAX_BODY_SIZE", "huge")]);
    assert!(p[0].message.contains("sizes look like"), "{}", p[0].message);
    let p = problems(&[("CLOUDX_PROFILE", "staging")]);
    assert_eq!(p[0].key, "profile");
    assert!(p[0].message.contains("`dev`") && p[0].message.contains("`prod`"), "{}", p[0].message);
    let p = problems(&[("CLOUDX_DATABASE__SQLITE_SYNCHRONOUS", "off")]);
    assert!(p[0].message.contains("`normal`"), "{}", p[0].message);
    let ok = load(&[("CLOUDX_HTTP__MAX_BODY_SIZE", "2MiB"), ("CLOUDX_HTTP__REQUEST_TIMEOUT", "1m 30s")]).unwrap();
    assert_eq!(ok.http.max_body_size, ByteSize::mib(2));
    assert_eq!(ok.http.request_timeout, Duration::from_secs(90));
}

#[test]
fn every_semantic_rule_names_its_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("CLOUDX_DATA_DIR", "", "data_dir"),
        ("CLOUDX_DATABASE__URL", "mysql://db/x", "database.url"),
        ("CLOUDX_DATABASE__URL", "sqlite::memory:", "database.url"),
        ("CLOUDX_DATABASE__MAX_CONNECTIONS", "0", "database.max_connections"),
        ("CLOUDX_DATABASE__ACQUIRE_TIMEOUT", "0s", "database.acquire_timeout"),
        ("CLOUDX_STORAGE__URL", "ftp://x/y", "storage.url"),
        ("CLOUDX_STORAGE__URL", "s3:///prefix", "storage.url"),
        ("CLOUDX_STORAGE__URL", "not a url", "storage.url"),
        ("CLOUDX_AUTH__JWT_SECRET", "short", "auth.jwt_secret"),
        ("CLOUDX_HTTP__BIND", "localhost", "http.bind"),
        ("CLOUDX_HTTP__CORS_ORIGINS", "https://ok.example, example.com", "http.cors_origins"),
        ("CLOUDX_HTTP__CORS_ORIGINS", "https://x.example/path", "http.cors_origins"),
        ("CLOUDX_HTTP__MAX_HEADER_SIZE", "1KiB", "http.max_header_size"),
        ("CLOUDX_HTTP__HEADER_READ_TIMEOUT", "0s", "http.header_read_timeout"),
        ("CLOUDX_HTTP__REQUEST_TIMEOUT", "0s", "http.request_timeout"),
        ("CLOUDX_HTTP__MAX_CONNECTIONS", "0", "http.max_connections"),
        ("CLOUDX_LLM__BASE_URL", "ftp://model", "llm.base_url"),
        ("CLOUDX_LLM__MODEL", " ", "llm.model"),
        ("CLOUDX_LLM__REQUEST_TIMEOUT", "0s", "llm.request_timeout"),
        ("CLOUDX_WORKER__CONCURRENCY", "0", "worker.concurrency"),
        ("CLOUDX_WORKER__CONCURRENCY", "5000", "worker.concurrency"),
        ("CLOUDX_WORKER__METRICS_BIND", "localhost", "worker.metrics_bind"),
    ];
    for (var, value, key) in cases {
        let p = problems(&[(var, value)]);
        assert_eq!(p.len(), 1, "{var}={value:?}: {p:?}");
        assert_eq!(p[0].key, *key, "{var}={value:?}");
        assert_eq!(p[0].origin, Some(Origin::Env((*var).into())), "{var}");
        assert!(p[0].message.len() > 20, "message should explain: {}", p[0].message);
    }
}

#[test]
fn database_url_password_never_appears_in_errors() {
    let p = problems(&[("CLOUDX_DATABASE__URL", "mysql://user:hunter2@db/x")]);
    assert!(!p[0].to_string().contains("hunter2"), "{}", p[0]);
}

#[test]
fn cors_wildcard_with_credentials_is_refused_in_every_profile() {
    let p = problems(&[("CLOUDX_HTTP__CORS_ORIGINS", "*"), ("CLOUDX_HTTP__CORS_ALLOW_CREDENTIALS", "true")]);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "http.cors_allow_credentials");
    assert!(load(&[("CLOUDX_HTTP__CORS_ORIGINS", "*")]).is_ok(), "wildcard alone is fine in dev");
}

#[test]
fn prod_refuses_insecure_settings_and_lists_them_all() {
    let p = problems(&[
        ("CLOUDX_PROFILE", "prod"),
        ("CLOUDX_HTTP__CORS_ORIGINS", "*"),
        ("CLOUDX_SANDBOX__ENABLED", "false"),
    ]);
    let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["auth.jwt_secret", "http.cors_origins", "sandbox.enabled"]);
    assert!(p[0].message.contains("CLOUDX_AUTH__JWT_SECRET"));
    let secret = "0123456789abcdef0123456789abcdef";
    let config = load(&[("CLOUDX_PROFILE", "prod"), ("CLOUDX_AUTH__JWT_SECRET", secret)]).unwrap();
    assert_eq!(config.profile, Profile::Prod);
    // EdDSA signs with a key file instead: prod asks for that, and not for the HMAC secret.
    let p = problems(&[("CLOUDX_PROFILE", "prod"), ("CLOUDX_AUTH__JWT_ALGORITHM", "EdDSA")]);
    let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["auth.jwt_private_key_file"]);
    let p = problems(&[("CLOUDX_AUTH__JWT_ALGORITHM", "RS256")]);
    assert_eq!(p[0].key, "auth.jwt_algorithm", "{p:?}");
}

#[test]
fn openai_variables_are_honoured_below_cloudx_ones() {
    let config = load(&[("OPENAI_API_KEY", "sk-a"), ("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")]).unwrap();
    assert_eq!(config.llm.api_key.as_ref().map(Secret::expose), Some("sk-a"));
    assert_eq!(config.llm.base_url, "http://127.0.0.1:11434/v1");
    let config = load(&[("OPENAI_API_KEY", "sk-a"), ("CLOUDX_LLM__API_KEY", "sk-b")]).unwrap();
    assert_eq!(config.llm.api_key.as_ref().map(Secret::expose), Some("sk-b"));
}

#[test]
fn lists_are_comma_separated() {
    let config = load(&[("CLOUDX_HTTP__CORS_ORIGINS", "https://a.example, https://b.example:8443,")]).unwrap();
    assert_eq!(config.http.cors_origins, ["https://a.example", "https://b.example:8443"]);
}

#[test]
fn secrets_are_redacted_when_printed() {
    let config = load(&[
        ("CLOUDX_AUTH__JWT_SECRET", "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"),
        ("CLOUDX_LLM__API_KEY", "sk-live-key"),
        ("CLOUDX_DATABASE__URL", "postgres://u:pw-in-url@127.0.0.1/db"),
    ])
    .unwrap();
    let shown = format!("{}\n{config:?}", config.to_redacted_toml());
    for secret in ["s3cr3t", "sk-live-key", "pw-in-url"] {
        assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
    }
    assert!(shown.contains("<redacted>"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let p = problems(&[("CLOUDX_HTTP__BIND", "nope"), ("CLOUDX_WORKER__CONCURRENCY", "x"), ("CLOUDX_UNKNOWN", "1")]);
    assert_eq!(p.len(), 3, "{p:?}");
}

#[test]
fn key_table_matches_the_structs() {
    // Serialise a configuration with every optional value set, flatten it, and compare with KEYS.
    let mut config = CloudxConfig::default();
    config.database.url = Some(Secret::new("postgres://x"));
    config.storage.url = Some("memory://".into());
    config.storage.endpoint = Some("http://127.0.0.1:9000".into());
    config.storage.region = Some("x".into());
    config.storage.access_key_id = Some("x".into());
    config.storage.secret_access_key = Some(Secret::new("x"));
    config.auth.jwt_secret = Some(Secret::new("x"));
    config.auth.jwt_private_key_file = Some("key.pem".into());
    config.llm.api_key = Some(Secret::new("x"));
    config.llm.organization = Some("x".into());
    config.sandbox.scratch_dir = Some("/var/tmp/cloudx-sandbox".into());
    config.worker.webhook_secret = Some(Secret::new("x"));
    config.worker.metrics_bind = Some("127.0.0.1:9184".into());
    let table: toml::Table = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
    let mut flat = Vec::new();
    for (name, value) in &table {
        match value {
            toml::Value::Table(section) => flat.extend(section.keys().map(|k| format!("{name}.{k}"))),
            _ => flat.push(name.clone()),
        }
    }
    flat.sort();
    let mut listed: Vec<_> = KEYS.iter().map(|k| k.key.to_owned()).collect();
    listed.sort();
    assert_eq!(flat, listed);
    // Every key can be set from its environment variable.
    for spec in KEYS {
        let err = load(&[(spec.env_var().as_str(), "x")]).err();
        let unknown = err.is_some_and(|e| {
            e.problems().iter().any(|p| {
                p.message.contains("no configuration key")
                    || p.message.contains("unknown field")
                    || p.message.contains("unknown key")
            })
        });
        assert!(!unknown, "{} is not recognised", spec.env_var());
    }
}

#[test]
fn every_key_is_documented() {
    let docs = include_str!("../../../docs/configuration.md");
    for spec in KEYS {
        assert!(docs.contains(&format!("`{}`", spec.key)), "docs/configuration.md does not document `{}`", spec.key);
        assert!(docs.contains(&spec.env_var()), "docs/configuration.md does not name {}", spec.env_var());
    }
}

#[test]
fn database_urls_parse() {
    assert_eq!(DatabaseTarget::parse("sqlite:///var/x.db").unwrap(), DatabaseTarget::Sqlite("/var/x.db".into()));
    assert_eq!(DatabaseTarget::parse("sqlite://rel.db?mode=rwc").unwrap(), DatabaseTarget::Sqlite("rel.db".into()));
    assert!(matches!(DatabaseTarget::parse("postgresql://u@h/db").unwrap(), DatabaseTarget::Postgres(_)));
    let shown = DatabaseTarget::parse("postgres://u:pw@h:5432/db").unwrap().display_location();
    assert_eq!(shown, "postgres://h:5432/db");
}
