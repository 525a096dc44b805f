//! The command line: `fluidity certs {init, issue, invite, revoke}`, `server`, `agent`, `up`, `health` and
//! `join`, as clap derive structs.
//!
//! The doc comments here are the `--help` text. The option structs of `server` and `agent` are the configuration
//! layers themselves ([`ServerLayer`], [`AgentLayer`]), flattened in, so every YAML key is also a flag.
//! This module only describes the command line: it does not read files or the environment, merge layers or run
//! anything (that is `config` and `main`).

use std::path::PathBuf;

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::config::{
    AgentLayer, DEFAULT_CERT_DAYS, DEFAULT_CLIENT_CN, DEFAULT_LOCAL_PROXY_PORT, ServerLayer,
};

/// What `--version` prints after the program name: the crate version, the commit it was built from ("unknown"
/// outside a git checkout) and the target triple, for example `0.1.0 (abc1234, x86_64-unknown-linux-musl)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("FLUIDITY_COMMIT"),
    ", ",
    env!("FLUIDITY_TARGET"),
    ")"
);

/// Fluidity: a personal HTTP tunnel. A local HTTP/1.1 proxy (the agent) carries your traffic over one mutually
/// authenticated TLS 1.3 HTTP/2 connection to an exit server.
///
/// Settings come from, highest first: command-line flags, FLUIDITY_<KEY> environment variables, the YAML file given
/// with --config, and built-in defaults.
#[derive(Debug, Parser)]
#[command(name = "fluidity", version = VERSION, about, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and manage the private CA and certificates
    Certs {
        /// The certificate operation.
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run the exit server
    Server(ServerArgs),
    /// Run the local proxy
    Agent(AgentArgs),
    /// Run server and agent together on this machine, with generated certificates
    Up(UpArgs),
    /// Check a /healthz endpoint: exit 0 when it answers 200, 1 otherwise (a container HEALTHCHECK without a shell)
    Health(HealthArgs),
    /// Set up this device from an invite file (from `fluidity certs invite`)
    ///
    /// Checks the file (version, checksum, certificate signed by the included CA, matching key, not expired) and
    /// writes agent.yaml, ca.crt, client.crt and client.key (mode 0600) into DIR, then prints the command that
    /// starts the agent.
    Join(JoinArgs),
}

/// `fluidity join`
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The invite file
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Folder to write the configuration into (default: the platform's config folder: $XDG_CONFIG_HOME/fluidity
    /// or ~/.config/fluidity on Linux, ~/Library/Application Support/fluidity on macOS, %APPDATA%\fluidity on
    /// Windows)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Overwrite existing files
    #[arg(long)]
    pub force: bool,
    /// The passphrase of a sealed invite, in FILE (its first line; - reads standard input)
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

impl Cli {
    /// The command line as `--help` shows it: the derived definition, with each configuration flag's default and
    /// `FLUIDITY_*` variable added to its help from the one declaration of the key (see `config`).
    pub fn command_with_notes() -> clap::Command {
        Self::command()
            .mut_subcommand("server", crate::config::annotate_help::<ServerLayer>)
            .mut_subcommand("agent", crate::config::annotate_help::<AgentLayer>)
    }

    /// Parses the process's arguments; on a usage error (or `--help`, `--version`) prints and exits as clap does
    /// (exit 2 for errors).
    pub fn parse_args() -> Self {
        let matches = Self::command_with_notes().get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
    }
}

/// `fluidity certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a private CA plus a server and a client certificate (PEM) in a folder
    ///
    /// Writes ca.crt, ca.key, server.crt, server.key, client.crt and client.key. Private keys get mode 0600 (on
    /// Windows they take the folder's permissions: keep them under your profile, for example in %APPDATA%).
    Init {
        /// Folder to write the CA and certificates into (created if missing)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A host name or IP address the server certificate is valid for; repeat for several
        /// (default: localhost, 127.0.0.1, ::1)
        #[arg(long = "server-san", value_name = "NAME_OR_IP")]
        server_san: Vec<String>,
        /// Common name of the client certificate
        #[arg(long, value_name = "NAME", default_value = DEFAULT_CLIENT_CN)]
        client_cn: String,
        /// Validity of the certificates, in days
        #[arg(long, value_name = "N", default_value_t = DEFAULT_CERT_DAYS)]
        days: u32,
        /// Overwrite existing files
        #[arg(long, conflicts_with = "if_missing")]
        force: bool,
        /// Exit 0 without writing anything when every file is already there (for a one-shot init in a container);
        /// a folder holding only some of them is still an error
        #[arg(long)]
        if_missing: bool,
    },
    /// Issue one more client certificate from an existing CA: OUT/NAME.crt and OUT/NAME.key
    Issue {
        /// Folder holding ca.crt and ca.key
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Name of the client (the certificate's common name and the file names)
        #[arg(long, value_name = "NAME")]
        client: String,
        /// Folder to write NAME.crt and NAME.key into
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity of the certificate, in days
        #[arg(long, value_name = "N", default_value_t = DEFAULT_CERT_DAYS)]
        days: u32,
        /// Overwrite existing files
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate and write it, its key, the CA certificate and the server address(es) as ONE
    /// invite file for `fluidity join` on the new device
    ///
    /// The file holds a private key: it is written with mode 0600 and must be sent over a private channel.
    Invite {
        /// Folder holding ca.crt and ca.key
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Name of the new device (the certificate's common name)
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Server address the device connects to, HOST or HOST:PORT ([v6]:PORT for IPv6); repeat for several
        #[arg(long, value_name = "HOST[:PORT]", required = true)]
        server: Vec<String>,
        /// The invite file to write
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Validity of the certificate, in days
        #[arg(long, value_name = "N", default_value_t = DEFAULT_CERT_DAYS)]
        days: u32,
        /// Overwrite an existing file
        #[arg(long)]
        force: bool,
        /// Seal the invite with the passphrase in FILE (its first line; - reads standard input): `join` then needs
        /// the same passphrase
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Revoke a client certificate: add it to DIR/crl.pem (point the server's crl_file at it)
    Revoke {
        /// Folder holding ca.crt and ca.key
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The certificate to revoke (PEM)
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
    },
}

/// `fluidity server`
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// YAML configuration file (server.yaml); without it only environment, flags and defaults apply
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Settings that override the file and the environment.
    #[command(flatten)]
    pub flags: ServerLayer,
}

/// `fluidity agent`
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// YAML configuration file (agent.yaml); without it only environment, flags and defaults apply
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Settings that override the file and the environment.
    #[command(flatten)]
    pub flags: AgentLayer,
    /// Write the flags given back into the config file, keeping its other keys (comments are lost)
    #[arg(long, requires = "config")]
    pub save: bool,
}

/// `fluidity up`
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Folder for certificates and state (default: a per-user data folder: $XDG_DATA_HOME/fluidity or
    /// ~/.local/share/fluidity on Linux, ~/Library/Application Support/fluidity on macOS, %APPDATA%\fluidity on
    /// Windows)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Agent proxy port (on 127.0.0.1)
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_LOCAL_PROXY_PORT)]
    pub port: u16,
    /// Log level (trace, debug, info, warn, error, off) or a tracing filter directive (default: info)
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// `fluidity health`
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The URL to GET (default: /healthz on the server's health_addr, taken from --config, FLUIDITY_HEALTH_ADDR or
    /// the built-in 127.0.0.1:8081; an address of 0.0.0.0 is checked on 127.0.0.1). An agent answers
    /// http://127.0.0.1:PROXY_PORT/healthz.
    #[arg(value_name = "URL")]
    pub url: Option<String>,
    /// The server's YAML configuration file, to read health_addr from
    #[arg(long, short, value_name = "FILE", conflicts_with = "url")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
        Cli::command_with_notes().debug_assert();
    }

    #[test]
    fn agent_help_shows_defaults_and_variables() {
        let mut command = Cli::command_with_notes();
        let agent = command
            .find_subcommand_mut("agent")
            .expect("the agent command");
        let help = agent.render_help().to_string();
        assert!(
            help.contains("[default: 8443] [env: FLUIDITY_SERVER_PORT]"),
            "{help}"
        );
        assert!(
            help.contains("[env: FLUIDITY_SERVER_IP, comma-separated]"),
            "{help}"
        );
    }

    #[test]
    fn agent_flags_parse_into_the_layer() {
        let cli = Cli::try_parse_from([
            "fluidity",
            "agent",
            "--config",
            "agent.yaml",
            "--server-ip",
            "203.0.113.7",
            "--fast-connect",
            "--allow-open-proxy=false",
            "--log-format",
            "json",
            "--save",
        ])
        .expect("valid command line");
        let Command::Agent(args) = cli.command else {
            panic!("expected the agent command");
        };
        assert!(args.save);
        assert_eq!(args.flags.server_ip, Some(vec!["203.0.113.7".to_owned()]));
        assert_eq!(args.flags.fast_connect, Some(true));
        assert_eq!(args.flags.allow_open_proxy, Some(false));
        assert_eq!(args.flags.log_format, Some(crate::config::LogFormat::Json));
        assert_eq!(args.flags.server_port, None);
    }

    #[test]
    fn server_ip_flag_takes_a_comma_separated_list() {
        let cli = Cli::try_parse_from([
            "fluidity",
            "agent",
            "--server-ip",
            "a.example:1,[2001:db8::1]:2,2001:db8::3",
        ])
        .expect("valid command line");
        let Command::Agent(args) = cli.command else {
            panic!("expected the agent command");
        };
        assert_eq!(
            args.flags.server_ip,
            Some(vec![
                "a.example:1".to_owned(),
                "[2001:db8::1]:2".to_owned(),
                "2001:db8::3".to_owned()
            ])
        );
    }

    #[test]
    fn save_requires_config() {
        assert!(Cli::try_parse_from(["fluidity", "agent", "--save"]).is_err());
    }

    #[test]
    fn server_list_flags_accept_repeats_and_commas() {
        let cli = Cli::try_parse_from([
            "fluidity",
            "server",
            "--deny-targets",
            "10.0.0.0/8,:25",
            "--deny-targets",
            "*.internal",
        ])
        .expect("valid command line");
        let Command::Server(args) = cli.command else {
            panic!("expected the server command");
        };
        assert_eq!(
            args.flags.deny_targets,
            Some(vec![
                "10.0.0.0/8".to_owned(),
                ":25".to_owned(),
                "*.internal".to_owned()
            ])
        );
        assert_eq!(args.flags.allow_targets, None);
    }

    #[test]
    fn up_defaults() {
        let cli = Cli::try_parse_from(["fluidity", "up"]).expect("valid command line");
        let Command::Up(args) = cli.command else {
            panic!("expected the up command");
        };
        assert_eq!(args.port, DEFAULT_LOCAL_PROXY_PORT);
        assert_eq!(args.dir, None);
    }

    #[test]
    fn certs_init_if_missing_conflicts_with_force() {
        let err = Cli::try_parse_from([
            "fluidity",
            "certs",
            "init",
            "--out",
            "pki",
            "--force",
            "--if-missing",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn health_takes_a_url_or_a_config_but_not_both() {
        let cli = Cli::try_parse_from(["fluidity", "health"]).expect("valid command line");
        let Command::Health(args) = cli.command else {
            panic!("expected the health command");
        };
        assert_eq!((args.url, args.config), (None, None));
        let cli = Cli::try_parse_from(["fluidity", "health", "http://127.0.0.1:9/healthz"])
            .expect("valid command line");
        let Command::Health(args) = cli.command else {
            panic!("expected the health command");
        };
        assert_eq!(args.url.as_deref(), Some("http://127.0.0.1:9/healthz"));
        assert!(
            Cli::try_parse_from(["fluidity", "health", "--config", "s.yaml", "http://x/"]).is_err()
        );
    }

    #[test]
    fn certs_init_defaults() {
        let cli = Cli::try_parse_from(["fluidity", "certs", "init", "--out", "pki"])
            .expect("valid command line");
        let Command::Certs {
            command:
                CertsCommand::Init {
                    out,
                    server_san,
                    client_cn,
                    days,
                    force,
                    if_missing,
                },
        } = cli.command
        else {
            panic!("expected certs init");
        };
        assert!(!if_missing);
        assert_eq!(out, PathBuf::from("pki"));
        assert!(server_san.is_empty());
        assert_eq!(client_cn, DEFAULT_CLIENT_CN);
        assert_eq!(days, DEFAULT_CERT_DAYS);
        assert!(!force);
    }
}
