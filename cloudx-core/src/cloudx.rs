//! The `Cloudx` facade: one handle that owns the database and the auth port (and, as they
//! arrive, the storage, queue and sandbox ports) and offers every operation the front ends
//! expose.

use std::sync::Arc;

use uuid::Uuid;

use crate::auth::Auth;
use crate::auth::token::Keys;
use crate::config::{CloudxConfig, JwtAlgorithm, Profile, Secret, jwt_ed25519_path, jwt_secret_path};
use crate::db::Database;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::Storage;

/// The cloudx library, opened on a configuration. Cheap to clone: clones share one instance.
///
/// # Example
/// ```
/// # tokio_test_block_on(async {
/// use cloudx_core::{Cloudx, CloudxConfig};
///
/// let dir = tempfile::tempdir().unwrap();
/// let cx = Cloudx::connect(CloudxConfig::embedded(dir.path())).await.unwrap();
/// assert!(cx.readiness().await.is_ready());
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Cloudx {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: CloudxConfig,
    db: Database,
    instance_id: Uuid,
    jwt_secret: Secret,
    auth: Auth,
    storage: Storage,
    queue: crate::queue::Queue,
    /// Job webhooks: the allowed hosts and the signing key.
    webhooks: Arc<crate::queue::webhook::Webhooks>,
    /// The sandbox, made on first use (or why it cannot be).
    sandbox: std::sync::OnceLock<std::result::Result<crate::sandbox::Sandbox, String>>,
    /// The model client of the agent, made on first use (its TLS set-up is not free).
    model: std::sync::OnceLock<crate::agent::llm::Model>,
}

impl Cloudx {
    /// Opens everything the configuration names: creates the data folder on first use,
    /// connects to the database and applies pending migrations.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for an invalid configuration
    /// (every problem listed), [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when the
    /// database cannot be reached, [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) when the
    /// database was migrated by a newer cloudx.
    pub async fn connect(config: CloudxConfig) -> Result<Self> {
        config.validate()?;
        crate::fs::create_private_dir(&config.data_dir)?;
        let jwt_secret = match &config.auth.jwt_secret {
            Some(secret) => secret.clone(),
            None => {
                // Prod requires it for HS256; with EdDSA it is not used for tokens.
                debug_assert!(config.profile == Profile::Dev || config.auth.jwt_algorithm == JwtAlgorithm::EdDsa);
                let path = jwt_secret_path(&config.data_dir);
                let secret = crate::fs::read_or_create_secret(&path, crate::fs::random_secret)?;
                if secret.len() < 32 {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "the JWT secret in {} is {} bytes long; it needs at least 32 (delete the file to generate a new one)",
                            path.display(),
                            secret.len()
                        ),
                    ));
                }
                Secret::new(secret)
            }
        };
        let db = Database::connect(&config).await?;
        let report = db.migrate().await?;
        if !report.applied.is_empty() {
            tracing::info!(applied = ?report.applied, version = report.version, "database migrated");
        }
        let instance_id = db.instance_id().await?;
        let ed25519_pem = match (config.auth.jwt_algorithm, &config.auth.jwt_private_key_file) {
            (JwtAlgorithm::Hs256, _) => None,
            (JwtAlgorithm::EdDsa, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("auth.jwt_private_key_file: cannot read {}: {e}", path.display()),
                )
            })?),
            (JwtAlgorithm::EdDsa, None) => {
                debug_assert_eq!(config.profile, Profile::Dev, "validation requires a key file in prod");
                let path = jwt_ed25519_path(&config.data_dir);
                Some(crate::fs::read_or_create_secret(&path, Keys::generate_ed25519_pem)?)
            }
        };
        let auth = Auth::open(db.clone(), &config.auth, jwt_secret.expose().as_bytes(), ed25519_pem.as_deref()).await?;
        let storage = Storage::open(db.clone(), &config)?;
        let queue = crate::queue::Queue::new(db.clone());
        let webhooks = Arc::new(crate::queue::webhook::Webhooks::open(&config)?);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                db,
                instance_id,
                jwt_secret,
                auth,
                queue,
                webhooks,
                storage,
                sandbox: std::sync::OnceLock::new(),
                model: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The configuration this instance was opened with.
    pub fn config(&self) -> &CloudxConfig {
        &self.inner.config
    }

    /// Accounts, sessions, tokens and the audit log.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// Projects, members and their versioned files.
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    pub(crate) fn sandbox_cell(&self) -> &std::sync::OnceLock<std::result::Result<crate::sandbox::Sandbox, String>> {
        &self.inner.sandbox
    }

    /// The agent's model client, made once.
    pub(crate) fn model(&self) -> Result<crate::agent::llm::Model> {
        if let Some(model) = self.inner.model.get() {
            return Ok(model.clone());
        }
        let model = crate::agent::llm::Model::new(&self.inner.config.llm)?;
        Ok(self.inner.model.get_or_init(|| model).clone())
    }

    /// The durable job queue.
    pub fn queue(&self) -> &crate::queue::Queue {
        &self.inner.queue
    }

    /// Job webhooks: which targets are allowed, and the signing key.
    pub fn webhooks(&self) -> &Arc<crate::queue::webhook::Webhooks> {
        &self.inner.webhooks
    }

    /// The database pool.
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// The id of the instance (shared by every node on one database).
    pub fn instance_id(&self) -> Uuid {
        self.inner.instance_id
    }

    /// The HS256 signing secret: configured, or generated into the data folder in `dev`.
    pub fn jwt_secret(&self) -> &Secret {
        &self.inner.jwt_secret
    }

    /// Checks every dependency a request needs; each check says what failed.
    pub async fn readiness(&self) -> Readiness {
        let database = match self.inner.db.ping().await {
            Ok(()) => Check { name: "database", ok: true, detail: self.inner.db.backend().to_owned() },
            Err(e) => {
                // /readyz is unauthenticated: the reason goes to the log, not to the client.
                tracing::warn!(error = %e.message(), "readiness: the database does not answer");
                Check {
                    name: "database",
                    ok: false,
                    detail: "the database does not answer (the server log has the reason)".into(),
                }
            }
        };
        let storage = match self.inner.storage.ping().await {
            Ok(()) => Check { name: "storage", ok: true, detail: self.inner.storage.backend().to_owned() },
            Err(e) => {
                tracing::warn!(error = %e.message(), "readiness: the object store does not answer");
                Check {
                    name: "storage",
                    ok: false,
                    detail: "the object store does not answer (the server log has the reason)".into(),
                }
            }
        };
        Readiness { checks: vec![database, storage] }
    }

    /// Closes the database pool; call before exit so SQLite checkpoints its WAL.
    pub async fn close(&self) {
        self.inner.auth.close();
        self.inner.db.close().await;
    }
}

/// The result of [`Cloudx::readiness`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    /// One entry per dependency.
    pub checks: Vec<Check>,
}

impl Readiness {
    /// Whether every check passed.
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// One readiness check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What was checked: `database`, `storage`.
    pub name: &'static str,
    /// Whether it answered.
    pub ok: bool,
    /// The backend when it answered, the reason when it did not.
    pub detail: String,
}
