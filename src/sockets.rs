//! The socket flags every command shares (one rule, see
//! `signet_workload::location`), and what a client says when a
//! socket turns out not to be the one it needs.

use std::path::{Path, PathBuf};

use signet_workload::{SocketLocation, SocketRole};

/// Help of every `--agent-socket` flag.
pub const AGENT_SOCKET_HELP: &str = "Agent socket (Workload API and SDS): a path or unix:///path \
     [default: $SIGNET_AGENT_SOCKET, else $SPIFFE_ENDPOINT_SOCKET, else the config key \
     agent_socket, else /run/signet/agent.sock (servers run as root; clients look there first) \
     or /tmp/signet/agent.sock]";

/// Help of every `--admin-socket` flag.
pub const ADMIN_SOCKET_HELP: &str = "Admin socket of the server: a path or unix:///path \
     [default: $SIGNET_ADMIN_SOCKET, else the config key admin_socket, else \
     /run/signet/private/admin.sock (servers run as root; clients look there first) or \
     /tmp/signet/private/admin.sock]";

/// The value parser of the socket flags.
pub fn socket_arg(text: &str) -> Result<PathBuf, String> {
    signet_workload::location::parse_socket_path(text)
}

/// Resolves a socket setting: `flag`, else the environment, else `config`,
/// else the defaults.
pub fn locate(
    role: SocketRole,
    flag: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<SocketLocation> {
    SocketLocation::resolve(role, flag, config).map_err(anyhow::Error::msg)
}

/// The `--agent-socket` / `--admin-socket` a printed command needs to reach
/// `bound` from the same shell: none when a client would find it anyway.
pub fn flag_to_reach(role: SocketRole, bound: &Path) -> String {
    match SocketLocation::resolve(role, None, None) {
        Ok(l) if l.client_path() == bound => String::new(),
        _ => format!(" {} {}", role.flag(), bound.display()),
    }
}

/// The users `--trust-socket-owner` names, as uids.
pub fn trusted_owners(names: &[String]) -> anyhow::Result<Vec<u32>> {
    names
        .iter()
        .map(|n| {
            crate::helper_cmd::lookup_user(n)
                .map_err(|e| anyhow::anyhow!("--trust-socket-owner {n:?}: {e}"))
        })
        .collect()
}
