//! The `fluidity` binary: parses the command line, sets up logging, runs the chosen command and maps the outcome to
//! an exit code (0 success or signal, 1 runtime failure, 2 usage or configuration error).

use anyhow::Context as _;
use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use tracing::{error, info};

use fluidity::cli::{
    AgentArgs, CertsCommand, Cli, Command, HealthArgs, JoinArgs, ServerArgs, UpArgs,
};
use fluidity::config::{self, LogFormat, LogSettings};
use fluidity::shutdown;
use fluidity::up::{self, Up};
use fluidity::{Agent, Server, certs, invite};

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    let env: HashMap<String, String> = std::env::vars().collect();
    match cli.command {
        Command::Certs { command } => run_certs(command),
        Command::Server(args) => run_server(args, &env),
        Command::Agent(args) => run_agent(args, &env),
        Command::Up(args) => run_up(args, &env),
        Command::Health(args) => run_health(args, &env),
        Command::Join(args) => run_join(args, &env),
    }
}

/// A configuration error: one line on stderr, exit 2.
fn config_failure(err: impl std::fmt::Display) -> ExitCode {
    eprintln!("fluidity: {err}");
    ExitCode::from(2)
}

/// Installs the subscriber. The loaders have checked `log.level` with the same [`config::log_filter`], so the
/// error (a configuration error) is only reachable for a level that skipped them.
fn init_tracing(log: &LogSettings) -> Result<(), ExitCode> {
    let filter = config::log_filter(&log.level).map_err(|err| {
        config_failure(format!(
            "log_level: `{}` is not a valid level or filter ({err})",
            log.level
        ))
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// Which runtime a role runs on.
#[derive(Clone, Copy)]
enum Threads {
    /// One thread: the agent's work all funnels through one tunnel connection anyway, and cross-thread wake-ups
    /// cost more CPU than they gain (bench/results/HISTORY.md).
    One,
    /// A worker per core: `up` runs the agent and the server's accept loop on it.
    PerCore,
}

fn runtime(threads: Threads) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread(),
        Threads::PerCore => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
}

/// Runs a role on a fresh runtime: signals, then `start` binds and runs it. Startup and runtime failures are logged
/// once and exit 1.
fn run_role<F, Fut>(threads: Threads, start: F) -> ExitCode
where
    F: FnOnce(tokio_util::sync::CancellationToken, tokio::sync::watch::Receiver<u64>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let outcome = runtime(threads)
        .context("cannot start the runtime")
        .and_then(|rt| {
            rt.block_on(async {
                let (token, reload) =
                    shutdown::signals().context("cannot install signal handlers")?;
                start(token, reload).await
            })
        });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Logs go to stderr: this is the one line the user sees.
            error!("{err:#}");
            ExitCode::from(1)
        }
    }
}

/// Calls `reload` on every SIGHUP; a failed reload keeps the old material and is logged.
fn spawn_reloader(
    mut signal: tokio::sync::watch::Receiver<u64>,
    reload: impl Fn() -> anyhow::Result<()> + Send + 'static,
) {
    tokio::spawn(async move {
        while signal.changed().await.is_ok() {
            if let Err(err) = reload() {
                error!(error = %format!("{err:#}"), "reload failed, keeping the current certificates");
            }
        }
    });
}

fn run_server(args: ServerArgs, env: &HashMap<String, String>) -> ExitCode {
    let config = match config::load_server(args.config.as_deref(), &args.flags, env) {
        Ok(config) => config,
        Err(err) => return config_failure(err),
    };
    if let Err(code) = init_tracing(&config.log) {
        return code;
    }
    // One thread accepts and serves /healthz; the tunnels run on the server's own worker threads (one per core).
    run_role(Threads::One, |token, reload| async move {
        let server = Server::bind(config).await?;
        let reloader = server.reloader();
        spawn_reloader(reload, move || reloader.reload());
        server.run(token).await
    })
}

fn run_agent(args: AgentArgs, env: &HashMap<String, String>) -> ExitCode {
    let config = match config::load_agent(args.config.as_deref(), &args.flags, env) {
        Ok(config) => config,
        Err(err) => return config_failure(err),
    };
    if args.save
        && let Some(path) = &args.config
    {
        if let Err(err) = config::save_agent(path, &args.flags) {
            return config_failure(err);
        }
        eprintln!("fluidity: saved the given flags to {}", path.display());
    }
    if let Err(code) = init_tracing(&config.log) {
        return code;
    }
    run_role(Threads::One, |token, reload| async move {
        let agent = Agent::bind(config).await?;
        let reloader = agent.reloader();
        spawn_reloader(reload, move || reloader.reload());
        agent.run(token).await
    })
}

#[expect(clippy::print_stdout, reason = "up talks to the person who started it")]
fn run_up(args: UpArgs, env: &HashMap<String, String>) -> ExitCode {
    let Some(dir) = args.dir.or_else(|| up::default_dir(env)) else {
        return config_failure(format!(
            "no folder for certificates: set --dir ({} is not set)",
            up::Os::CURRENT.data_dir_var()
        ));
    };
    let log = LogSettings {
        level: args.log_level.unwrap_or_else(|| "info".to_string()),
        ..LogSettings::default()
    };
    if let Err(err) = config::log_filter(&log.level) {
        return config_failure(format!(
            "--log-level: `{}` is not a valid level or filter ({err})",
            log.level
        ));
    }
    if let Err(code) = init_tracing(&log) {
        return code;
    }
    run_role(Threads::PerCore, |token, reload| async move {
        let up = Up::prepare(dir, args.port).await?;
        println!("{}", up.instructions());
        let server_reload = up.server.reloader();
        let agent_reload = up.agent.reloader();
        spawn_reloader(reload, move || {
            server_reload.reload()?;
            agent_reload.reload()
        });
        up.run(token).await
    })
}

/// `fluidity health`: GET the URL (or the server's health address) once; 0 on 200, 1 with a one-line reason
/// otherwise, 2 for a bad configuration file.
fn run_health(args: HealthArgs, env: &HashMap<String, String>) -> ExitCode {
    let url = match args.url {
        Some(url) => url,
        None => match config::load_server(args.config.as_deref(), &Default::default(), env) {
            Ok(config) => fluidity::health_url(config.health_addr),
            Err(err) => return config_failure(err),
        },
    };
    let checked = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt
            .block_on(fluidity::check_health(&url, fluidity::HEALTH_CHECK_TIMEOUT))
            .map_err(|err| err.to_string()),
        Err(err) => Err(format!("cannot start the runtime: {err}")),
    };
    match checked {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("fluidity: {url}: unhealthy: {reason}");
            ExitCode::from(1)
        }
    }
}

#[expect(clippy::print_stdout, reason = "certs reports the files it wrote")]
fn run_certs(command: CertsCommand) -> ExitCode {
    let written = match command {
        CertsCommand::Init {
            out,
            server_san,
            client_cn,
            days,
            force,
            if_missing,
        } => match if_missing.then(|| certs::init_complete(&out)) {
            Some(Ok(true)) => {
                println!(
                    "{}: every certificate file is already there; nothing written",
                    out.display()
                );
                return ExitCode::SUCCESS;
            }
            Some(Err(err)) => Err(err),
            _ => certs::init_dir(&out, &server_san, &client_cn, days, force),
        },
        CertsCommand::Issue {
            ca_dir,
            client,
            out,
            days,
            force,
        } => certs::issue_into(&ca_dir, &client, &out, days, force),
        CertsCommand::Invite {
            ca_dir,
            name,
            server,
            out,
            days,
            force,
            passphrase_file,
        } => {
            let passphrase = match read_passphrase(passphrase_file.as_deref()) {
                Ok(passphrase) => passphrase,
                Err(err) => return config_failure(err),
            };
            let written = certs::invite(
                &ca_dir,
                &name,
                &server,
                &out,
                days,
                force,
                passphrase.as_deref(),
            );
            if written.is_ok() {
                eprintln!(
                    "{} is a secret: it holds {name}'s private key. Send it over a private channel (in person, \
                     an end-to-end encrypted message), delete it once joined, then run on the new device: \
                     fluidity join FILE",
                    out.display()
                );
            }
            written.map(|path| vec![path])
        }
        CertsCommand::Revoke { ca_dir, cert } => certs::revoke(&ca_dir, &cert).map(|crl| vec![crl]),
    };
    match written {
        Ok(paths) => {
            for path in paths {
                println!("wrote {}", path.display());
            }
            info!("certificates written");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("fluidity: {err}");
            ExitCode::from(1)
        }
    }
}

/// `fluidity join`: checks the invite, writes the agent's files, prints the command that starts it. A refused invite
/// or a missing config folder is exit 2; a write failure exit 1.
#[expect(
    clippy::print_stdout,
    reason = "join prints the command that starts the agent"
)]
fn run_join(args: JoinArgs, env: &HashMap<String, String>) -> ExitCode {
    let data = match std::fs::read(&args.file) {
        Ok(data) => data,
        Err(err) => return config_failure(format!("{}: {err}", args.file.display())),
    };
    let passphrase = match read_passphrase(args.passphrase_file.as_deref()) {
        Ok(passphrase) => passphrase,
        Err(err) => return config_failure(err),
    };
    let opened = match passphrase {
        Some(passphrase) if invite::is_sealed(&data) => invite::open(&data, &passphrase),
        _ => Ok(data),
    };
    let invite = opened
        .and_then(|data| invite::parse(&data))
        .and_then(|inv| invite::check(&inv, time::OffsetDateTime::now_utc()).map(|()| inv));
    let invite = match invite {
        Ok(invite) => invite,
        Err(err) => return config_failure(format!("{}: {err}", args.file.display())),
    };
    let Some(dir) = args
        .dir
        .or_else(|| invite::default_dir(env, invite::Os::current()))
    else {
        return config_failure("no config folder found (HOME or APPDATA unset): pass --dir");
    };
    match certs::write_set(&dir, &invite::join_files(&invite), args.force) {
        Ok(paths) => {
            for path in paths {
                eprintln!("wrote {}", path.display());
            }
            println!(
                "fluidity agent --config {}",
                dir.join(invite::AGENT_CONFIG_FILE).display()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("fluidity: {err}");
            ExitCode::from(1)
        }
    }
}

/// The passphrase in `path`, when given (`-`: standard input): its first line, without the line ending.
fn read_passphrase(path: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let Some(path) = path else {
        return Ok(None);
    };
    let from_stdin = path.as_os_str() == "-";
    let source = if from_stdin {
        "standard input".to_owned()
    } else {
        path.display().to_string()
    };
    let text = if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|err| format!("cannot read the passphrase from {source}: {err}"))?;
    match text.lines().next() {
        Some(line) if !line.is_empty() => Ok(Some(line.to_owned())),
        _ => Err(format!("the passphrase from {source} is empty")),
    }
}

/// mimalloc keeps freed memory for reuse instead of handing it back to the kernel at once: glibc's malloc returned
/// and re-faulted the pages of every frame buffer, a sizeable share of the agent's CPU in bulk transfers.
/// It is built without transparent huge pages (`no_thp` in Cargo.toml): with them, every page mimalloc purged and
/// reused came back as a 2 MiB page the kernel had to zero, and zeroing pages became a visible part of a bulk
/// download's profile (bench/results/HISTORY.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
