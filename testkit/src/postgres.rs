//! A throwaway PostgreSQL 15 for tests: a cluster in a temp dir on a free
//! loopback port (PostgreSQL cannot bind port 0: a port another process
//! took in the meantime is retried with another), stopped on drop. As root it runs as the `postgres` user
//! (initdb and postgres refuse root). Missing binaries fail the test with
//! a message: scripts/test installs them.

use std::path::PathBuf;
use std::process::Command;

use crate::ports::free_port;

#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

fn find_bin() -> PathBuf {
    for dir in [
        "/usr/lib/postgresql/15/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/17/bin",
    ] {
        if std::path::Path::new(dir).join("initdb").exists() {
            return PathBuf::from(dir);
        }
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        return p.parent().unwrap().to_path_buf();
    }
    panic!("PostgreSQL is not installed (no initdb); scripts/test installs it with apt-get");
}

fn is_root() -> bool {
    crate::uid() == 0
}

impl Postgres {
    /// A cluster, initialized and started.
    pub fn start() -> Postgres {
        let mut pg = Postgres::init();
        pg.start_server();
        pg
    }

    /// A cluster, initialized but not started: edit its configuration
    /// (see [`Postgres::append_conf`]), then [`Postgres::start_server`].
    pub fn init() -> Postgres {
        let bin = find_bin();
        let dir = tempfile::Builder::new()
            .prefix("signet-pg")
            .tempdir()
            .unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown to the postgres user failed");
        }
        let pg = Postgres {
            dir,
            bin,
            port: free_port(),
            as_postgres,
        };
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "signet",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg
    }

    /// Starts the server and waits until it accepts connections; if its
    /// port was taken since it was chosen, on another port.
    pub fn start_server(&mut self) {
        for _ in 0..5 {
            let _ = std::fs::remove_file(self.log_path());
            match self.try_start_server() {
                Ok(()) => return,
                Err(_) if self.log().contains("could not bind") => self.port = free_port(),
                Err(e) => panic!("{e}"),
            }
        }
        panic!(
            "PostgreSQL found no free port in five tries:\n{}",
            self.log()
        );
    }

    fn try_start_server(&self) -> Result<(), String> {
        let data = self.data_dir();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.log_path();
        // -w waits until the server accepts connections (bounded by -t).
        self.try_run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// Stops the server as an operator's restart does (fast shutdown:
    /// clients are disconnected, nothing committed is lost); start it again
    /// with [`Postgres::start_server`].
    pub fn stop_server(&self) {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    /// Appends `text` to `file` in the data directory (postgresql.conf,
    /// pg_hba.conf, pg_ident.conf), keeping the file's owner.
    pub fn append_conf(&self, file: &str, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join(file))
            .unwrap();
        writeln!(f, "\n{text}").unwrap();
    }

    /// Replaces `file` in the data directory, keeping its owner.
    pub fn replace_conf(&self, file: &str, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.data_dir().join(file))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the Unix socket (for the `signet` superuser, trusted).
    pub fn socket_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Where PostgreSQL's binaries (psql, pg_ctl) are.
    pub fn bin(&self) -> &std::path::Path {
        &self.bin
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Whether the server runs as the `postgres` user (the tests run as root).
    pub fn runs_as_postgres(&self) -> bool {
        self.as_postgres
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        if let Err(e) = self.try_run(tool, args) {
            panic!("{e}");
        }
    }

    fn try_run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
                .unwrap()
        } else {
            Command::new(&exe).args(args).output().unwrap()
        };
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{tool} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        ))
    }

    /// URL of the `postgres` maintenance database.
    pub fn admin_url(&self) -> String {
        format!("postgres://signet@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates a database and returns its URL.
    pub async fn database(&self, name: &str) -> String {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.admin_url())
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        format!("postgres://signet@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- postgres log -----\n{}", self.log());
        }
        let data = self.dir.path().join("data");
        let exe = self.bin.join("pg_ctl");
        let args = [
            "-D",
            data.to_str().unwrap_or_default(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_since_it_was_chosen_is_replaced() {
        let mut pg = Postgres::init();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        pg.port = taken.local_addr().unwrap().port();
        pg.start_server();
        assert_ne!(pg.port, taken.local_addr().unwrap().port());
        let out = Command::new(pg.bin().join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", pg.log());
    }
}
