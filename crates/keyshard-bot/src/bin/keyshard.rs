//! The `keyshard` binary: serve as one instance of the cluster, or print the cluster view.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyshard_bot::{cli, Config, LedgerConfig, ViewConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "keyshard",
    version,
    about = "A Discord AI bot that runs as a cluster of instances"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve as one instance (the default).
    Run,
    /// Every instance: alive or not, heartbeat age, load.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Which instance serves a user: the primary, the effective owner now, and why.
    Assign {
        user_id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Apply the usage ledger's migrations to DATABASE_URL (instances also do at start).
    Migrate,
    /// Usage from the ledger over a recent span, grouped by one dimension (or the totals).
    Usage {
        /// How far back: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = cli::parse_since)]
        since: std::time::Duration,
        /// user, guild, command, provider, key or instance.
        #[arg(long, value_parser = cli::parse_dimension)]
        by: Option<keyshard_ledger::Dimension>,
        #[arg(long)]
        json: bool,
    },
    /// The configuration, checked without starting anything.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check an env file for every instance 1..INSTANCE_COUNT: every problem at once, no secret
    /// shown; exits 1 on problems.
    Check {
        /// The cluster's env file.
        #[arg(long, default_value = ".env.multi")]
        env_file: PathBuf,
        /// Compare INSTANCE_COUNT with this compose file's keyshard-N services.
        #[arg(long)]
        compose: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Reads files and prints; no runtime, no logging, and its own exit code for "problems".
    if let Some(Command::Config(ConfigCommand::Check { env_file, compose })) = &args.command {
        return match cli::config_check(env_file, compose.as_deref()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("keyshard: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let log = keyshard_bot::logging::init();
    // One crypto provider for every TLS client in the process (serenity's and the providers').
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyshard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command.unwrap_or(Command::Run) {
            Command::Run => {
                let config = Config::from_env()?;
                log.hide(&config);
                let shutdown = CancellationToken::new();
                tokio::spawn(signal_shutdown(shutdown.clone()));
                keyshard_bot::run(config, shutdown).await
            }
            Command::Status { json } => cli::status(&ViewConfig::from_env()?, json).await,
            Command::Assign { user_id, json } => {
                cli::assign(&ViewConfig::from_env()?, user_id, json).await
            }
            Command::Config(_) => unreachable!("handled before the runtime starts"),
            Command::Migrate => {
                let ledger = LedgerConfig::from_env()?;
                log.hide_ledger(&ledger);
                cli::migrate(&ledger).await
            }
            Command::Usage { since, by, json } => {
                let ledger = LedgerConfig::from_env()?;
                log.hide_ledger(&ledger);
                cli::usage(&ledger, since, by, json).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyshard: {}", log.scrub(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on SIGTERM (docker stop, rolling restart) or Ctrl-C.
async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
