//! Where the agent socket and the admin socket are, by one rule for every
//! command that serves or uses them: the flag, else the environment, else
//! the config file, else the default. A path may be written bare
//! (`/run/signet/agent.sock`) or as a Workload API address
//! (`unix:///run/signet/agent.sock`, `unix:/run/...`), in all three places.
//!
//! Defaults: a server run as root puts its sockets under `/run/signet/`,
//! which only root can write, so no other user can create or replace them
//! first; any other user's server uses `/tmp/signet/`. A client with no
//! setting uses the first of the two that exists, `/run/signet/` first.

use std::path::{Path, PathBuf};

use crate::socket::endpoint_path;

/// Socket directory of servers run as root.
pub const ROOT_SOCKET_DIR: &str = "/run/signet";
/// Socket directory of servers run as any other user.
pub const USER_SOCKET_DIR: &str = "/tmp/signet";

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

/// Which of Signet's two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRole {
    /// The Workload API (and Envoy SDS) of an agent.
    Agent,
    /// The admin API of a server.
    Admin,
}

impl SocketRole {
    /// The flag every command uses for this socket.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Agent => "--agent-socket",
            Self::Admin => "--admin-socket",
        }
    }

    /// The config file key every command uses for this socket.
    pub fn config_key(self) -> &'static str {
        match self {
            Self::Agent => "agent_socket",
            Self::Admin => "admin_socket",
        }
    }

    /// Environment variables naming this socket, the first set one wins.
    /// `SPIFFE_ENDPOINT_SOCKET` is the standard one every SPIFFE library
    /// reads; `SIGNET_AGENT_SOCKET` lets a shell point Signet elsewhere
    /// than its other SPIFFE workloads.
    pub fn env_names(self) -> &'static [&'static str] {
        match self {
            Self::Agent => &["SIGNET_AGENT_SOCKET", "SPIFFE_ENDPOINT_SOCKET"],
            Self::Admin => &["SIGNET_ADMIN_SOCKET"],
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Self::Agent => "agent.sock",
            Self::Admin => "private/admin.sock",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Agent => "agent socket",
            Self::Admin => "admin socket",
        }
    }

    /// The default paths, in the order clients look for them.
    pub fn default_paths(self) -> [PathBuf; 2] {
        [
            Path::new(ROOT_SOCKET_DIR).join(self.file_name()),
            Path::new(USER_SOCKET_DIR).join(self.file_name()),
        ]
    }

    /// Where a server run by this process's user puts this socket by default.
    pub fn server_default(self) -> PathBuf {
        let [root, user] = self.default_paths();
        if rustix::process::geteuid().is_root() {
            root
        } else {
            user
        }
    }
}

/// Where a socket setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSource {
    Flag,
    Env(&'static str),
    Config,
    Default,
}

/// A resolved socket setting: one path when it was set, the default paths
/// when it was not.
#[derive(Debug, Clone)]
pub struct SocketLocation {
    role: SocketRole,
    source: SocketSource,
    candidates: Vec<PathBuf>,
}

/// Parses a socket path as flags and config files accept it: a path
/// (relative to the working directory, or absolute), or a Workload API
/// address `unix:///abs/path` / `unix:/abs/path`.
pub fn parse_socket_path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("empty socket path".into());
    }
    if text.starts_with("unix:") || text.contains("://") {
        return endpoint_path(text);
    }
    Ok(PathBuf::from(text))
}

impl SocketLocation {
    /// Applies the rule: `flag`, else the role's environment variables,
    /// else `config`, else the defaults. An environment variable that is set
    /// but malformed is an error naming it.
    pub fn resolve(
        role: SocketRole,
        flag: Option<PathBuf>,
        config: Option<PathBuf>,
    ) -> Result<Self, String> {
        Self::resolve_with(role, flag, config, |name| std::env::var(name).ok())
    }

    fn resolve_with(
        role: SocketRole,
        flag: Option<PathBuf>,
        config: Option<PathBuf>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let one = |source, path| Self {
            role,
            source,
            candidates: vec![path],
        };
        let reparse = |path: PathBuf, name: &str| match path.to_str() {
            Some(text) => parse_socket_path(text).map_err(|e| format!("{name}: {e}")),
            None => Ok(path),
        };
        if let Some(path) = flag {
            return Ok(one(SocketSource::Flag, reparse(path, role.flag())?));
        }
        for name in role.env_names() {
            if let Some(value) = env(name).filter(|v| !v.is_empty()) {
                // As every SPIFFE library reads them: absolute paths only.
                let path = endpoint_path(&value).map_err(|e| format!("${name}: {e}"))?;
                return Ok(one(SocketSource::Env(name), path));
            }
        }
        if let Some(path) = config {
            return Ok(one(SocketSource::Config, reparse(path, role.config_key())?));
        }
        Ok(Self {
            role,
            source: SocketSource::Default,
            candidates: role.default_paths().into(),
        })
    }

    /// A location set explicitly (tests, and callers that already hold a path).
    pub fn explicit(role: SocketRole, path: PathBuf) -> Self {
        Self {
            role,
            source: SocketSource::Flag,
            candidates: vec![path],
        }
    }

    pub fn role(&self) -> SocketRole {
        self.role
    }

    pub fn source(&self) -> &SocketSource {
        &self.source
    }

    /// The path a server binds: the setting, else its user's default.
    pub fn server_path(&self) -> PathBuf {
        match self.source {
            SocketSource::Default => self.role.server_default(),
            _ => self.candidates[0].clone(),
        }
    }

    /// The path a client connects to, looked up again on each call: the
    /// setting, else the first default path where a socket exists (else the
    /// first default).
    pub fn client_path(&self) -> PathBuf {
        self.candidates
            .iter()
            .find(|p| std::fs::symlink_metadata(p).is_ok())
            .unwrap_or(&self.candidates[0])
            .clone()
    }

    /// Says where the path came from, for an error: "from --agent-socket",
    /// or, when nothing was set, which defaults were looked for.
    pub fn origin(&self) -> String {
        match &self.source {
            SocketSource::Flag => format!("{} from {}", self.role.noun(), self.role.flag()),
            SocketSource::Env(name) => format!("{} from ${name}", self.role.noun()),
            SocketSource::Config => format!(
                "{} from the config key {}",
                self.role.noun(),
                self.role.config_key()
            ),
            SocketSource::Default => {
                let [root, user] = self.role.default_paths();
                format!(
                    "no {} set, looked for {} then {}; set {} or ${} to use another",
                    self.role.noun(),
                    root.display(),
                    user.display(),
                    self.role.flag(),
                    self.role.env_names()[0],
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn resolve(
        role: SocketRole,
        flag: Option<&str>,
        config: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<SocketLocation, String> {
        SocketLocation::resolve_with(
            role,
            flag.map(PathBuf::from),
            config.map(PathBuf::from),
            env(vars),
        )
    }

    #[test]
    fn flag_beats_environment_beats_config_beats_default() {
        let vars = [("SPIFFE_ENDPOINT_SOCKET", "unix:///env/agent.sock")];
        let flag = resolve(SocketRole::Agent, Some("/flag"), Some("/config"), &vars).unwrap();
        assert_eq!(flag.client_path(), Path::new("/flag"));
        assert_eq!(flag.source(), &SocketSource::Flag);

        let from_env = resolve(SocketRole::Agent, None, Some("/config"), &vars).unwrap();
        assert_eq!(from_env.client_path(), Path::new("/env/agent.sock"));
        assert_eq!(from_env.server_path(), Path::new("/env/agent.sock"));
        assert_eq!(
            from_env.source(),
            &SocketSource::Env("SPIFFE_ENDPOINT_SOCKET")
        );

        let config = resolve(SocketRole::Agent, None, Some("/config"), &[]).unwrap();
        assert_eq!(config.client_path(), Path::new("/config"));
        assert!(
            config.origin().contains("agent_socket"),
            "{}",
            config.origin()
        );

        let default = resolve(SocketRole::Agent, None, None, &[]).unwrap();
        assert_eq!(default.source(), &SocketSource::Default);
        let text = default.origin();
        assert!(
            text.contains("/run/signet/agent.sock") && text.contains("/tmp/signet/agent.sock"),
            "{text}"
        );
    }

    #[test]
    fn signet_agent_socket_wins_over_spiffe_endpoint_socket() {
        let vars = [
            ("SPIFFE_ENDPOINT_SOCKET", "unix:///spiffe.sock"),
            ("SIGNET_AGENT_SOCKET", "/signet.sock"),
        ];
        let l = resolve(SocketRole::Agent, None, None, &vars).unwrap();
        assert_eq!(l.client_path(), Path::new("/signet.sock"));
        // An empty variable counts as unset.
        let vars = [
            ("SIGNET_AGENT_SOCKET", ""),
            ("SPIFFE_ENDPOINT_SOCKET", "/s"),
        ];
        let l = resolve(SocketRole::Agent, None, None, &vars).unwrap();
        assert_eq!(l.client_path(), Path::new("/s"));
    }

    #[test]
    fn the_admin_socket_ignores_the_workload_variables() {
        let vars = [("SPIFFE_ENDPOINT_SOCKET", "/agent.sock")];
        let l = resolve(SocketRole::Admin, None, None, &vars).unwrap();
        assert_eq!(l.source(), &SocketSource::Default);
        let vars = [("SIGNET_ADMIN_SOCKET", "unix:/admin.sock")];
        let l = resolve(SocketRole::Admin, None, None, &vars).unwrap();
        assert_eq!(l.client_path(), Path::new("/admin.sock"));
    }

    #[test]
    fn a_malformed_variable_is_named() {
        let vars = [("SPIFFE_ENDPOINT_SOCKET", "tcp://127.0.0.1:1")];
        let e = resolve(SocketRole::Agent, None, None, &vars).unwrap_err();
        assert!(e.starts_with("$SPIFFE_ENDPOINT_SOCKET: "), "{e}");
        let vars = [("SIGNET_ADMIN_SOCKET", "relative/admin.sock")];
        let e = resolve(SocketRole::Admin, None, None, &vars).unwrap_err();
        assert!(
            e.contains("SIGNET_ADMIN_SOCKET") && e.contains("absolute"),
            "{e}"
        );
        // A flag makes the variable irrelevant.
        assert!(resolve(SocketRole::Admin, Some("/a"), None, &vars).is_ok());
    }

    #[test]
    fn every_form_of_a_path_is_accepted() {
        for text in [
            "/run/x/agent.sock",
            "unix:///run/x/agent.sock",
            "unix:/run/x/agent.sock",
        ] {
            assert_eq!(
                parse_socket_path(text).unwrap(),
                Path::new("/run/x/agent.sock")
            );
        }
        assert!(parse_socket_path("unix://relative").is_err());
        assert!(parse_socket_path("tcp://127.0.0.1:1").is_err());
        assert!(parse_socket_path("").is_err());
        assert_eq!(
            parse_socket_path("run/a.sock").unwrap(),
            Path::new("run/a.sock")
        );
        // A config file's unix:// form is read as a path, not kept verbatim.
        let l = resolve(SocketRole::Admin, None, Some("unix:///c/admin.sock"), &[]).unwrap();
        assert_eq!(l.client_path(), Path::new("/c/admin.sock"));
    }

    #[test]
    fn clients_take_the_first_default_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("run/agent.sock");
        let second = dir.path().join("tmp/agent.sock");
        let l = SocketLocation {
            role: SocketRole::Agent,
            source: SocketSource::Default,
            candidates: vec![first.clone(), second.clone()],
        };
        assert_eq!(l.client_path(), first, "nothing exists: the first");
        std::fs::create_dir_all(second.parent().unwrap()).unwrap();
        std::fs::write(&second, b"").unwrap();
        assert_eq!(l.client_path(), second);
        std::fs::create_dir_all(first.parent().unwrap()).unwrap();
        std::fs::write(&first, b"").unwrap();
        assert_eq!(l.client_path(), first);
    }
}
