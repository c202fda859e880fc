//! The `signet` binary: parses arguments, loads configuration, wires the
//! crates together, waits for a signal and drains. No domain logic lives
//! here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin_cli;
mod agent_cmd;
mod api_cli;
mod authz_cmd;
mod authz_listen;
mod authz_settings;
mod banner;
mod demo_cmd;
mod health;
mod logging;
mod nested;
mod policy_cli;
mod proxy_cmd;
mod server_cmd;
mod signals;
mod sockets;

use std::path::PathBuf;

use admin_cli::{
    AdminOpts, AgentCmd, BundleCmd, EntryCmd, FederationCmd, JwtCmd, TokenCmd, X509Cmd,
};
use agent_cmd::AgentSettings;
use api_cli::{ApiCmd, ApiOpts};
use server_cmd::ServerSettings;

/// Signet: SPIFFE workload identities with zero-trust authorization.
#[derive(Debug, Parser)]
#[command(name = "signet", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `signet_agent=debug`.
    #[arg(long, global = true, env = "SIGNET_LOG", default_value = "info")]
    log: String,

    /// Also accept agent and admin sockets served by this user (uid or
    /// name; repeatable). Clients refuse sockets served by anyone but
    /// themselves or root, which any local user could have put there.
    #[arg(
        long,
        global = true,
        env = "SIGNET_TRUST_SOCKET_OWNER",
        value_delimiter = ',',
        value_name = "USER"
    )]
    trust_socket_owner: Vec<String>,

    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between variants is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the combined server and agent: embedded SQLite, self-signed CA, zero config.
    Run(RunArgs),
    /// Run the server (CA, datastore, admin API, agent API).
    Server(ServerSettings),
    /// Run an agent (node attestation, Workload API socket); or manage agents: list, show, evict, ban.
    ///
    /// Run an agent: `signet agent --server-address IP:PORT --trust-bundle
    /// FILE --join-token TOKEN` (the options under "Run an agent").
    ///
    /// Or manage the agents a server knows: `signet agent list|show|evict|ban`
    /// (the commands below, with the options under "Manage agents").
    Agent(AgentArgs),
    /// Workload side: fetch SVIDs and bundles, validate JWTs, watch updates.
    Api {
        #[command(subcommand)]
        cmd: ApiCmd,
        #[command(flatten)]
        opts: ApiOpts,
    },
    /// Registration entries: create, show, update, delete, count.
    Entry {
        #[command(subcommand)]
        cmd: EntryCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// The server's CA authorities: show; prepare, activate, taint, revoke
    /// after a suspected key compromise.
    Authority {
        #[command(subcommand)]
        cmd: admin_cli::AuthorityCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// The upstream CA's roots in the bundle (with `--upstream-cert`):
    /// show; taint, revoke once the upstream CA was replaced.
    UpstreamAuthority {
        #[command(subcommand)]
        cmd: admin_cli::UpstreamAuthorityCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// The server's log filter: get, set, reset while it runs.
    Logger {
        #[command(subcommand)]
        cmd: admin_cli::LoggerCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Join tokens for agent attestation.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Trust bundles: own and federated.
    Bundle {
        #[command(subcommand)]
        cmd: BundleCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Federation with other trust domains: their bundles fetched from
    /// their SPIFFE bundle endpoints and kept current.
    Federation {
        #[command(subcommand)]
        cmd: FederationCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Serve OIDC discovery for a server's JWT-SVIDs as a process of its
    /// own (keys from its admin socket); `signet server --oidc-listen`
    /// serves the same inside the server.
    OidcProvider(admin_cli::OidcProviderArgs),
    /// Envoy external authorization (ext_authz gRPC) on a listener of its
    /// own, for Envoys without an agent (`--authz-policy` serves it on the
    /// agent socket).
    Authz(authz_cmd::AuthzArgs),
    /// Mint X509-SVIDs as an administrator.
    X509 {
        #[command(subcommand)]
        cmd: X509Cmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Mint JWT-SVIDs as an administrator.
    Jwt {
        #[command(subcommand)]
        cmd: JwtCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// The whole mission on loopback: core, two workloads, sidecars, a policy, requests.
    Demo(demo_cmd::DemoArgs),
    /// The mTLS sidecar: inbound (mTLS -> app) and outbound (app -> mTLS) listeners.
    Proxy(proxy_cmd::ProxyArgs),
    /// SVIDs to files (certificate, key, bundle, JWTs), reloading a program on rotation.
    Helper(signet_helper::HelperArgs),
    /// For policy authors: evaluate, check and test policies (OPA Wasm or Rego).
    Policy {
        #[command(subcommand)]
        cmd: policy_cli::PolicyCmd,
        /// Output format of check and test: text or json.
        #[arg(long, value_enum, default_value = "text", global = true)]
        output: admin_cli::Output,
    },
    /// Check that the server answers on its admin socket, with --agent that
    /// the agent serves identities on its Workload API socket, or with --url
    /// that an HTTP endpoint (a sidecar's or helper's /ready) answers 2xx.
    Healthcheck {
        /// Check the agent instead of the server.
        #[arg(long)]
        agent: bool,
        /// Check an HTTP endpoint instead (a sidecar's or helper's
        /// `http://HOST:PORT/ready`): healthy on a 2xx answer. For
        /// container health checks in images without a shell or curl.
        #[arg(long, conflicts_with = "agent", value_name = "URL")]
        url: Option<String>,
        #[arg(long, requires = "agent", value_parser = sockets::socket_arg, help = sockets::AGENT_SOCKET_HELP)]
        agent_socket: Option<PathBuf>,
        /// Keep checking until healthy, for up to this long (e.g. 10s), for
        /// scripts that start a service and go on once it is ready.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        wait: std::time::Duration,
        #[command(flatten)]
        opts: AdminOpts,
    },
}

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    logging::init(&cli.log);
    match sockets::trusted_owners(&cli.trust_socket_owner) {
        Ok(uids) => signet_workload::trust_socket_owners(uids),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    if matches!(
        cli.command,
        Command::Run(_)
            | Command::Server(_)
            | Command::Agent(AgentArgs { cmd: None, .. })
            | Command::Proxy(_)
    ) {
        raise_open_file_limit();
    }
    // The proxy serves connections on its own per-core workers; its main
    // runtime only follows the Workload API, the policy files and the admin
    // endpoint, which one thread does (two fewer threads and their memory).
    let mut builder = match cli.command {
        Command::Proxy(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(r) => {
                let local = server_cmd::LocalAgent {
                    svid_cache_size: r.svid_cache_size,
                    sds: signet_sds::SdsOptions {
                        spiffe_validator: !r.sds_trusted_ca,
                    },
                    authz: r.authz.load()?,
                    health: None,
                };
                serve(r.server.with_local_agent(r.agent_socket), Some(local)).await
            }
            Command::Server(s) => serve(s, None).await,
            Command::Agent(AgentArgs {
                cmd: Some(cmd),
                opts,
                ..
            }) => admin_cli::agent(cmd, opts).await,
            Command::Agent(AgentArgs {
                cmd: None,
                settings,
                ..
            }) => run_agent(settings).await,
            Command::Api { cmd, opts } => api_cli::run(cmd, opts).await,
            Command::Entry { cmd, opts } => admin_cli::entry(cmd, opts).await,
            Command::Token { cmd, opts } => admin_cli::token(cmd, opts).await,
            Command::Logger { cmd, opts } => admin_cli::logger(cmd, opts).await,
            Command::Authority { cmd, opts } => admin_cli::authority(cmd, opts).await,
            Command::UpstreamAuthority { cmd, opts } => {
                admin_cli::upstream_authority(cmd, opts).await
            }
            Command::Bundle { cmd, opts } => admin_cli::bundle(cmd, opts).await,
            Command::Federation { cmd, opts } => admin_cli::federation(cmd, opts).await,
            Command::X509 { cmd, opts } => admin_cli::x509(cmd, opts).await,
            Command::OidcProvider(args) => admin_cli::oidc_provider(args).await,
            Command::Authz(args) => authz_cmd::run(args).await,
            Command::Jwt { cmd, opts } => admin_cli::jwt(cmd, opts).await,
            Command::Demo(args) => demo_cmd::run(args).await,
            Command::Proxy(args) => proxy_cmd::run(args).await,
            Command::Helper(args) => signet_helper::run(args).await,
            Command::Policy { cmd, output } => policy_cli::run(cmd, output),
            Command::Healthcheck {
                url,
                agent,
                agent_socket,
                wait,
                opts,
            } => {
                until_healthy(wait, || async {
                    match (&url, agent) {
                        (Some(url), _) => admin_cli::http_health(url).await,
                        (None, true) => api_cli::health(agent_socket.clone()).await,
                        (None, false) => admin_cli::healthcheck(&opts).await,
                    }
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `signet ... | head -1`: when the reader of stdout goes away, `println!`
/// panics with "failed printing to stdout: Broken pipe". Exit as a program
/// killed by SIGPIPE would (status 141), without a panic message.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Servers raise their soft open-file limit to the hard one: every
/// connection is a descriptor, and the soft default (often 1,024) is far
/// below what the hard limit allows.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    server: ServerSettings,
    #[arg(long, alias = "socket-path", value_parser = sockets::socket_arg, help = sockets::AGENT_SOCKET_HELP)]
    agent_socket: Option<PathBuf>,
    /// Envoy SDS: send trust bundles as plain trusted_ca PEM instead of the SPIFFE validator.
    #[arg(long)]
    sds_trusted_ca: bool,
    /// Most workload SVIDs the local agent keeps; streamed entries are always kept.
    #[arg(long, default_value_t = signet_agent::DEFAULT_SVID_CACHE_SIZE)]
    svid_cache_size: usize,
    #[command(flatten)]
    authz: authz_settings::AuthzSettings,
}

#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_help_heading = "Manage agents (on the server, through its admin socket)"
)]
struct AgentArgs {
    #[command(subcommand)]
    cmd: Option<AgentCmd>,
    #[command(flatten, next_help_heading = "Run an agent")]
    settings: AgentSettings,
    #[command(flatten, next_help_heading = "Manage agents")]
    opts: AdminOpts,
}

async fn serve(
    settings: ServerSettings,
    local_agent: Option<server_cmd::LocalAgent>,
) -> anyhow::Result<()> {
    let check = settings.check_config();
    let resolved = settings.resolve()?;
    if check {
        println!(
            "configuration is valid (trust domain {})",
            resolved.run.server.trust_domain()
        );
        return Ok(());
    }
    server_cmd::serve(resolved, local_agent).await
}

async fn run_agent(settings: AgentSettings) -> anyhow::Result<()> {
    let check = settings.check_config();
    let resolved = settings.resolve()?;
    if check {
        println!(
            "configuration is valid ({} server address(es))",
            resolved.config.servers.len()
        );
        return Ok(());
    }
    agent_cmd::serve(resolved).await
}

/// Runs `check` until it succeeds or `wait` has passed (once when `wait`
/// is zero); the last failure is the error.
async fn until_healthy<F, Fut>(wait: std::time::Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every command and every flag says what it is in `--help`.
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
                }
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" && sub.get_about().is_none() {
                    missing.push(format!("{name} (the command)"));
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "signet", &mut missing);
        missing.sort();
        missing.dedup();
        assert!(
            missing.is_empty(),
            "no help text:\n  {}",
            missing.join("\n  ")
        );
    }
}
