//! The `kubeherald` binary: parses the command line, loads the configuration,
//! and hands over to the library. Exit codes: 0 success, 1 runtime failure,
//! 2 invalid command line or configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use kubeherald::config::{ClusterSelection, Config, Environment, KubeconfigLocation};
use kubeherald::contexts::Surroundings;
use kubeherald::telemetry::{self, LogFormat};
use kubeherald::{app, shutdown};

const ENVIRONMENT_HELP: &str = "\
Environment:
  CONFIG_PATH            YAML configuration file (like --config)
  CONFIG                 inline YAML configuration, when no file is given
  KUBECONFIG             kubeconfig path list (default ~/.kube/config, then in-cluster)
  SNS_TOPIC_ARN          SNS topic for resource events (unset: JSON lines on stdout)
  SPOOL_DIR              durable spool directory (unset: bounded in-memory queue)
  SENTRY_DSN             report errors and panics to Sentry
  HTTP_LISTEN            address of /metrics, /healthz, /readyz (default 0.0.0.0:9090)
  AWS_REGION, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
  AWS_ENDPOINT_URL[_SNS|_CLOUDWATCH_LOGS]
                         AWS credentials, region and endpoints
  RUST_LOG               log filter (default info)
Environment variables override the same setting in the file.";

/// glibc's malloc raises its mmap threshold each time a block above it is
/// freed (up to 32 MiB, mallopt(3)), after which LIST pages, spool reads
/// and request bodies come from its arenas, and their memory stays resident
/// once freed. Fixed at 128 KiB (its initial value, which also ends the
/// raising), blocks that large are returned to the system when freed: SPEC
/// §9 bounds resident memory. Measured by `scripts/bench.sh`: the burst
/// scenario's peak 153 → 126 MiB, the logs scenario's 237 → 185 MiB. An
/// operator's own `GLIBC_TUNABLES` is left to decide.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_malloc_mmap_threshold() {
    const MMAP_THRESHOLD_BYTES: libc::c_int = 128 * 1024;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    // SAFETY: mallopt only sets a parameter of the allocator; it is called
    // first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

/// musl's allocator has no such threshold to fix.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_malloc_mmap_threshold() {}

/// Forwards Kubernetes resource changes to SNS and pod logs to CloudWatch
/// Logs, for every context of a kubeconfig.
#[derive(Debug, Parser)]
#[command(name = "kubeherald", version, after_help = ENVIRONMENT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Configuration file (YAML); overrides CONFIG_PATH and CONFIG
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Log line format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,

    /// Address of /metrics, /healthz and /readyz (default 0.0.0.0:9090);
    /// overrides HTTP_LISTEN and http.listen
    #[arg(long, global = true, value_name = "ADDR")]
    http_listen: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch every configured context and forward until SIGTERM (the default)
    #[command(after_help = ENVIRONMENT_HELP)]
    Run,
    /// Verify the configuration, every context (reachable, kinds served,
    /// RBAC by SelfSubjectAccessReview) and the AWS identity and targets;
    /// exit 0 only when everything passes
    #[command(after_help = ENVIRONMENT_HELP)]
    Check {
        /// Output format
        #[arg(long, value_enum, default_value_t = CheckOutput::Table)]
        output: CheckOutput,
    },
    /// Print the version and exit
    Version,
    /// Events SNS would not take, kept in {spool}/dead-letter/
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
    /// The configuration file: its JSON Schema, or a check of one
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the JSON Schema of the configuration file (for editors: see
    /// the README's yaml-language-server modeline)
    Schema,
    /// Check the configuration (as `run` reads it: --config, CONFIG_PATH or
    /// CONFIG, and the environment) without reaching any cluster; exit 0
    /// when valid, 2 naming the field otherwise
    #[command(after_help = ENVIRONMENT_HELP)]
    Validate,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CheckOutput {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// Queue every dead letter to be published again (after fixing the
    /// cause): a running kubeherald puts them back into its spool within
    /// seconds, otherwise the next start does
    Replay,
}

fn main() -> ExitCode {
    fix_malloc_mmap_threshold();
    // kube, the AWS SDK and Sentry's transport all use rustls; more than one
    // crypto provider is compiled in, so the process default is named once,
    // before anything builds a TLS client: Sentry's reqwest transport is
    // built in `telemetry::init` and panics without one (SPEC §11). An Err
    // means one is installed already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Version => {
            println!("kubeherald {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run => run(cli.config, cli.log_format, cli.http_listen),
        Command::DeadLetter(DeadLetterCommand::Replay) => replay_dead_letters(cli.config),
        Command::Config(ConfigCommand::Schema) => {
            match serde_json::to_string_pretty(&kubeherald::config::schema()) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("kubeherald: cannot print the schema: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config(ConfigCommand::Validate) => validate_config(cli.config),
        Command::Check { output } => check(cli.config, output),
    }
}

fn check(config_flag: Option<PathBuf>, output: CheckOutput) -> ExitCode {
    let config = match load_config(config_flag, &Environment::from_process()) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kubeherald: cannot start a runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let findings = runtime.block_on(kubeherald::check::run(
        &config,
        &Surroundings::from_process(),
    ));
    match output {
        CheckOutput::Table => print!("{}", kubeherald::check::table(&findings)),
        CheckOutput::Json => match serde_json::to_string_pretty(&findings) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("kubeherald: cannot print the findings: {err}");
                return ExitCode::FAILURE;
            }
        },
    }
    if findings.iter().all(|f| f.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn validate_config(config_flag: Option<PathBuf>) -> ExitCode {
    let config = match load_config(config_flag, &Environment::from_process()) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    println!("configuration valid");
    let clusters = match &config.clusters {
        ClusterSelection::Contexts { kubeconfig, names } => {
            let file = match kubeconfig {
                KubeconfigLocation::Explicit { paths, .. } => paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
                KubeconfigLocation::Default => "~/.kube/config or in-cluster".to_owned(),
            };
            match names {
                Some(names) => format!("contexts {} of {file}", names.join(", ")),
                None => format!("every context of {file}"),
            }
        }
        ClusterSelection::SingleCluster {
            name, namespaces, ..
        } => {
            format!("cluster {name}, namespaces {}", namespaces.join(", "))
        }
    };
    println!("  clusters:  {clusters}");
    let kinds: Vec<String> = config.resources.iter().map(ToString::to_string).collect();
    println!(
        "  events:    {} -> {}",
        if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.join(", ")
        },
        config.sns.as_ref().map_or_else(
            || "stdout".to_owned(),
            |sns| sns.topic_arn.as_str().to_owned()
        )
    );
    match &config.logs {
        None => println!("  pod logs:  not forwarded"),
        Some(logs) => match logs.sink {
            kubeherald::config::LogSink::CloudWatch => println!(
                "  pod logs:  CloudWatch Logs /{}-{{cluster}}, retention {} days",
                logs.prefix, logs.retention_days
            ),
            kubeherald::config::LogSink::Stdout => println!("  pod logs:  stdout"),
        },
    }
    match &config.spool.dir {
        Some(dir) => println!(
            "  spool:     {} (at most {} bytes)",
            dir.display(),
            config.spool.max_bytes
        ),
        None => println!("  spool:     in memory (lost at exit)"),
    }
    ExitCode::SUCCESS
}

fn replay_dead_letters(config_flag: Option<PathBuf>) -> ExitCode {
    let config = match load_config(config_flag, &Environment::from_process()) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let Some(dir) = config.spool.dir.as_deref() else {
        eprintln!(
            "kubeherald: no spool directory configured (spool.dir or SPOOL_DIR): dead letters are kept only beside an on-disk spool"
        );
        return ExitCode::from(2);
    };
    match kubeherald::publish::dead_letter::queue_replay(dir) {
        Ok(0) => {
            println!("no dead letters in {}", dir.display());
            ExitCode::SUCCESS
        }
        Ok(records) => {
            println!(
                "{records} dead letters queued for replay; a running kubeherald publishes them again within seconds, otherwise the next start does"
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!(
                "kubeherald: cannot queue the dead letters of {}: {err}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn run(
    config_flag: Option<PathBuf>,
    log_format: LogFormat,
    http_listen: Option<String>,
) -> ExitCode {
    let mut env = Environment::from_process();
    if http_listen.is_some() {
        env.http_listen = http_listen;
    }
    let sentry_dsn = std::env::var("SENTRY_DSN")
        .ok()
        .filter(|dsn| !dsn.trim().is_empty());
    // Sentry first, before any runtime exists; the guard flushes on return.
    let _telemetry = telemetry::init(log_format, sentry_dsn.as_deref());

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the main runtime");
            return ExitCode::FAILURE;
        }
    };
    // Handlers first: a SIGTERM while the configuration loads or the
    // spool recovers must stop kubeherald cleanly, not kill it.
    let signals = {
        let _context = runtime.enter();
        match shutdown::Signals::install() {
            Ok(signals) => signals,
            Err(err) => {
                // A process that could not be stopped cleanly must not start.
                tracing::error!(error = %err, "cannot install the SIGTERM/SIGINT handlers");
                return ExitCode::FAILURE;
            }
        }
    };

    let config = match load_config(config_flag, &env) {
        Ok(config) => config,
        Err(exit) => return exit,
    };

    let shutdown = CancellationToken::new();
    let outcome = runtime.block_on(async {
        let signals = tokio::spawn(signals.cancel_on_signal(shutdown.clone()));
        let outcome = app::run(config, Surroundings::from_process(), shutdown.clone()).await;
        shutdown.cancel();
        if let Err(join_error) = signals.await {
            tracing::warn!(error = %join_error, "the signal task ended abnormally");
        }
        outcome
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(app::StartError::Config(err)) => config_error(&err),
        Err(err) => {
            tracing::error!(error = %kubeherald::kube_api::error_chain(&err), "kubeherald stopped");
            ExitCode::FAILURE
        }
    }
}

/// The configuration every command reads (`--config`, `CONFIG_PATH`,
/// `CONFIG`, the environment); an invalid one is said and is exit code 2.
fn load_config(config_flag: Option<PathBuf>, env: &Environment) -> Result<Config, ExitCode> {
    Config::load(config_flag.as_deref(), env).map_err(|err| config_error(&err))
}

/// A configuration error is one line on stderr, whatever the log format,
/// so it is the first thing a person sees in `kubectl logs`.
fn config_error(err: &kubeherald::config::ConfigError) -> ExitCode {
    eprintln!("kubeherald: invalid configuration: {err}");
    ExitCode::from(2)
}
