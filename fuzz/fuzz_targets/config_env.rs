//! Configuration from arbitrary environment variables: loading never panics, and whatever it
//! accepts validates again and renders without leaking a secret.
#![no_main]

use cloudx_core::config::{ConfigLoader, DatabaseTarget};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = DatabaseTarget::parse(text);
    // Lines of NAME=VALUE; names get the CLOUDX_ prefix so they reach the key table.
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (format!("CLOUDX_{k}"), v.to_owned()))
        .filter(|(k, _)| k != "CLOUDX_CONFIG")
        .collect();
    if let Ok(config) = ConfigLoader::new().env(vars).load() {
        config.validate().expect("a loaded configuration is valid");
        let shown = config.to_redacted_toml();
        if config.auth.jwt_secret.is_some() {
            let line = shown.lines().find(|l| l.starts_with("jwt_secret")).expect("rendered");
            assert_eq!(line, "jwt_secret = \"<redacted>\"");
        }
    }
});
