//! `cloudx config check`.

use cloudx_core::CloudxConfig;

/// Prints the effective configuration (secrets redacted) of an already validated configuration.
pub(crate) fn check(config: &CloudxConfig) {
    let database =
        config.database_target().map(|t| format!("{} at {}", t.backend(), t.display_location())).unwrap_or_default();
    crate::print(&format!(
        "# configuration is valid (profile {:?}, database {database})\n{}",
        config.profile,
        config.to_redacted_toml()
    ));
}
