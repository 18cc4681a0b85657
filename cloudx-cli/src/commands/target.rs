//! Where `cloudx project`, `file`, `job`, `push` and `pull` act: on the daemon you signed in to (a
//! stored login), or else on this instance's own database and blob store, as the local
//! operator (whoever can open the data folder owns it).

use cloudx_core::{Cloudx, CloudxConfig, Principal};
pub(crate) use cloudx_http::client::target::Target;

use crate::commands::remote;

/// What the audit log records as the client of a local change.
const USER_AGENT: &str = concat!("cloudx-cli/", env!("CARGO_PKG_VERSION"), " (local)");

/// The daemon of the stored login, if there is one; else the instance `config` names.
pub(crate) async fn open(config: impl FnOnce() -> anyhow::Result<CloudxConfig>) -> anyhow::Result<Target> {
    if remote::signed_in()? {
        return Ok(Target::Remote(remote::session()?));
    }
    Ok(Target::local(Cloudx::connect(config()?).await?, Principal::System, USER_AGENT))
}
