//! The `cloudx` command: parses arguments, runs one command, maps failures to exit codes.

mod args;
mod commands;

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser as _;
use cloudx_core::ErrorKind;
use cloudx_core::config::{ConfigError, Profile};

use crate::args::{Cli, Command, ConfigCommand, LlmCommand};

/// Exit codes beyond 0 (success) and 2 (usage, from clap), after sysexits.h.
mod exit {
    pub(crate) const FAILURE: u8 = 1;
    pub(crate) const DATA: u8 = 65;
    pub(crate) const UNAVAILABLE: u8 = 69;
    pub(crate) const CONFIG: u8 = 78;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run(args) = cli.command {
        // The command's own exit code, or ours on failure.
        return match commands::load_config(&cli.global, |l| l)
            .map_err(anyhow::Error::from)
            .and_then(|config| runtime()?.block_on(commands::sandbox::run(&config, args)))
        {
            Ok(code) => ExitCode::from(code),
            Err(err) => {
                let _ = writeln!(std::io::stderr(), "error: {err:#}");
                ExitCode::from(exit_code(&err))
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    match command {
        Command::Version => {
            print(&format!("cloudx {}\n", cloudx_core::VERSION));
            Ok(())
        }
        Command::Config(ConfigCommand::Check) => {
            let config = commands::load_config(&global, |l| l)?;
            commands::config::check(&config);
            Ok(())
        }
        Command::Migrate => {
            let config = commands::load_config(&global, |l| l)?;
            init_logging(config.profile, "warn");
            runtime()?.block_on(commands::migrate(config))
        }
        Command::User(command) => {
            let config = commands::load_config(&global, |l| l)?;
            init_logging(config.profile, "warn");
            runtime()?.block_on(commands::users::user(config, command))
        }
        Command::Audit(command) => {
            let config = commands::load_config(&global, |l| l)?;
            init_logging(config.profile, "warn");
            runtime()?.block_on(commands::users::audit(config, command))
        }
        Command::Login(args) => {
            init_logging(Profile::Dev, "warn");
            runtime()?.block_on(commands::remote::login(args))
        }
        Command::Logout => {
            init_logging(Profile::Dev, "warn");
            runtime()?.block_on(commands::remote::logout())
        }
        Command::Apikey(command) => {
            init_logging(Profile::Dev, "warn");
            runtime()?.block_on(commands::remote::apikey(command))
        }
        Command::Project(command) => {
            init_logging(Profile::Dev, "warn");
            runtime()?.block_on(commands::projects::project(command, &global))
        }
        Command::File(command) => {
            init_logging(Profile::Dev, "warn");
            runtime()?.block_on(commands::projects::file(command, &global))
        }
        Command::Push(args) => {
            init_logging(Profile::Dev, "warn");
            runtime()?.block_on(commands::sync::push(args, &global))
        }
        Command::Pull(args) => {
            init_logging(Profile::Dev, "warn");
            runtime()?.block_on(commands::sync::pull(args, &global))
        }
        Command::Job(command) => {
            init_logging(Profile::Dev, "warn");
            runtime()?.block_on(commands::jobs::job(command, &global))
        }
        Command::Chat(args) => {
            init_logging(Profile::Dev, "warn");
            runtime()?.block_on(commands::agent::chat(args, &global))
        }
        Command::Task(command) => {
            init_logging(Profile::Dev, "warn");
            runtime()?.block_on(commands::agent::task(command, &global))
        }
        Command::Storage(command) => {
            let config = commands::load_config(&global, |l| l)?;
            init_logging(config.profile, "warn");
            runtime()?.block_on(commands::projects::storage(config, command))
        }
        Command::Run(_) => unreachable!("handled in main"),
        Command::Llm(LlmCommand::Check(args)) => {
            let config = commands::load_config(&global, |l| l)?;
            init_logging(config.profile, "warn");
            runtime()?.block_on(commands::llm::check(&config, args.json))
        }
        Command::Sandbox(command) => {
            let config = commands::load_config(&global, |l| l)?;
            commands::sandbox::sandbox(&config, command)
        }
        Command::Worker(args) => {
            let config = commands::load_config(&global, |l| {
                let l = match args.concurrency {
                    Some(n) => l.flag("worker.concurrency", "--concurrency", i64::from(n)),
                    None => l,
                };
                match &args.metrics_bind {
                    Some(bind) => l.flag("worker.metrics_bind", "--metrics-bind", bind.clone()),
                    None => l,
                }
            })?;
            init_logging(config.profile, "info");
            runtime()?.block_on(commands::worker::run(config, args.kinds))
        }
        Command::Serve(args) => {
            let config = commands::load_config(&global, |l| match &args.bind {
                Some(bind) => l.flag("http.bind", "--bind", bind.clone()),
                None => l,
            })?;
            init_logging(config.profile, "info");
            runtime()?.block_on(commands::serve::run(config))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Logs go to stderr: text in `dev`, JSON lines in `prod`; `RUST_LOG` overrides the level.
fn init_logging(profile: Profile, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match profile {
        // Lines logged while serving a request end with its id (cloudx_http::logging).
        Profile::Prod => builder.json().event_format(cloudx_http::logging::json()).init(),
        _ => builder.event_format(cloudx_http::logging::text()).init(),
    }
}

/// Writes command output to stdout (the one place the CLI prints results).
pub(crate) fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// An error that asks for a particular exit code (its message is printed as any other).
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(exit) = err.downcast_ref::<Exit>() {
        return exit.code;
    }
    if err.downcast_ref::<ConfigError>().is_some() {
        return exit::CONFIG;
    }
    if let Some(err) = err.downcast_ref::<cloudx_core::Error>() {
        return match err.kind() {
            ErrorKind::InvalidInput => exit::CONFIG,
            ErrorKind::Unavailable => exit::UNAVAILABLE,
            ErrorKind::Conflict => exit::DATA,
            _ => exit::FAILURE,
        };
    }
    exit::FAILURE
}
