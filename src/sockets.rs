//! The socket flags every command shares (one rule, see
//! `signet_workload::location`), and what a client says when a
//! socket turns out not to be the one it needs.

use std::path::{Path, PathBuf};

use signet_workload::{SocketLocation, SocketRole};

pub use signet_workload::location::{ADMIN_SOCKET_HELP, AGENT_SOCKET_HELP};

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
            signet_helper::lookup_user(n)
                .map_err(|e| anyhow::anyhow!("--trust-socket-owner {n:?}: {e}"))
        })
        .collect()
}
