//! `signet helper` end to end, with examples/postgres as written: a real
//! PostgreSQL serves TLS with the database's SVID the helper writes, a
//! client logs in with `psql` (sslmode=verify-full) by its SVID and is
//! mapped to a role by pg_ident.conf, another identity is refused, and
//! after the database SVID rotates the helper reloads PostgreSQL and a new
//! login sees the new certificate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use signet_testkit::postgres;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Combined, Proc, curl, require_root, signet, uid};
use postgres::Postgres;

const DB: &str = "spiffe://example.org/db/postgres";
const APP: &str = "spiffe://example.org/app";
const REPORTS: &str = "spiffe://example.org/reports";

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/postgres")
            .join(name),
    )
    .unwrap()
}

/// A hard link (or copy) of the signet binary at `dir/name/signet`, so
/// each helper is a distinct workload by `unix:path`.
fn signet_at(dir: &Path, name: &str) -> PathBuf {
    let home = dir.join(name);
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = home.join("signet");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_signet"), &bin).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_signet"), &bin).unwrap();
    }
    bin.canonicalize().unwrap()
}

fn create_entry(c: &Combined, id: &str, bin: &Path, extra: &[&str]) {
    let selector = format!("unix:path:{}", bin.display());
    let mut args = vec![
        "entry",
        "create",
        "--spiffe-id",
        id,
        "--selector",
        &selector,
    ];
    args.extend(extra);
    let out = c.admin(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An example helper config with the example's paths replaced by the test's.
fn helper_config(dir: &Path, name: &str, replace: &[(&str, &str)]) -> PathBuf {
    let mut text = example(name);
    for (from, to) in replace {
        assert!(text.contains(from), "{name} mentions {from}");
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// psql over TCP to `localhost` (verify-full checks the server's DNS SAN),
/// with the certificate files in `certs`.
fn psql(pg: &Postgres, certs: &Path, user: &str, sql: &str) -> Output {
    let conn = format!(
        "host=localhost hostaddr=127.0.0.1 port={} dbname=postgres user={user} sslmode=verify-full \
         sslrootcert={d}/bundle.pem sslcert={d}/svid.pem sslkey={d}/svid_key.pem connect_timeout=10",
        pg.port,
        d = certs.display()
    );
    Command::new(pg.bin().join("psql"))
        .args([&conn, "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env_remove("PGSERVICEFILE")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The superuser, over the trusted Unix socket.
fn admin_sql(pg: &Postgres, sql: &str) {
    let out = Command::new(pg.bin().join("psql"))
        .arg("-h")
        .arg(pg.socket_dir())
        .args(["-p", &pg.port.to_string(), "-U", "signet", "-d", "postgres"])
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", text(&out));
}

/// Serial of a PEM certificate file or of what `openssl` reads on stdin,
/// lowercase hex without leading zeros.
fn serial_of(args: &[&str], stdin_from: Option<&str>) -> Option<String> {
    let script = match stdin_from {
        Some(cmd) => format!("{cmd} </dev/null 2>/dev/null | openssl x509 -noout -serial"),
        None => format!("openssl x509 -noout -serial {}", args.join(" ")),
    };
    let out = Command::new("sh").arg("-c").arg(script).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().strip_prefix("serial=")?.to_ascii_lowercase();
    Some(hex.trim_start_matches('0').to_owned())
}

fn file_serial(path: &Path) -> String {
    serial_of(&["-in", &path.display().to_string()], None).expect("a certificate file")
}

/// The serial of the certificate PostgreSQL presents to a new connection.
fn server_serial(port: u16) -> Option<String> {
    serial_of(
        &[],
        Some(&format!(
            "openssl s_client -starttls postgres -connect 127.0.0.1:{port}"
        )),
    )
}

/// The address a helper (`--output json`, health endpoint on port 0)
/// reports its health endpoint bound.
fn health_addr(helper: &mut Proc) -> String {
    let line = helper.next_line_with("\"health_listening\"");
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    event["address"].as_str().unwrap().to_owned()
}

#[test]
#[ignore = "needs root: PostgreSQL runs as its own user and reads keys chowned to it (scripts/test runs it as root)"]
fn postgres_serves_and_authenticates_with_helper_written_svids_across_rotation() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // PostgreSQL (as the postgres user) reads the certificates under it.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Combined::start(dir, &[]);

    // Three workloads, told apart by the path of their executable.
    let db_bin = signet_at(dir, "db");
    let app_bin = signet_at(dir, "app");
    let reports_bin = signet_at(dir, "reports");
    // The database's SVID lives 30 s, so it rotates (at half-life) during the test.
    create_entry(
        &c,
        DB,
        &db_bin,
        &["--dns-name", "localhost", "--x509-ttl", "30s"],
    );
    create_entry(&c, APP, &app_bin, &["--dns-name", "app.example.org"]);
    create_entry(
        &c,
        REPORTS,
        &reports_bin,
        &["--dns-name", "reports.example.org"],
    );

    let mut pg = Postgres::init();
    let db_certs = dir.join("db-certs");
    std::fs::create_dir(&db_certs).unwrap();
    std::fs::set_permissions(&db_certs, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The database's helper: root hands the key to postgres (needs root;
    // without it PostgreSQL runs as this user and reads our files).
    let db_cfg = helper_config(
        dir,
        "db-helper.toml",
        &[
            ("/run/signet/postgres", db_certs.to_str().unwrap()),
            (
                "/var/lib/postgresql/15/main",
                pg.data_dir().to_str().unwrap(),
            ),
            ("127.0.0.1:8088", "127.0.0.1:0"),
            (
                "owner = \"postgres\"",
                if pg.runs_as_postgres() {
                    "owner = \"postgres\""
                } else {
                    "# owner: not root"
                },
            ),
        ],
    );
    let mut cmd = Command::new(&db_bin);
    cmd.args(["helper", "--output", "json", "--config"])
        .arg(&db_cfg)
        .env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{}", c.agent))
        .env("SIGNET_LOG", "info");
    let mut db_helper = Proc::spawn("db-helper", cmd, dir);
    let health = health_addr(&mut db_helper);
    db_helper.wait_for("\"x509_written\"");
    // PostgreSQL is not running yet: nothing to signal, and the helper says so.
    db_helper.wait_for("\"reload\"");
    assert!(
        db_helper.seen.last().unwrap().contains("\"ok\":false"),
        "{:?}",
        db_helper.seen
    );
    let first_serial = file_serial(&db_certs.join("svid.pem"));
    let (code, body) = curl(&format!("http://{health}/ready"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(DB), "{body}");
    let (code, _) = curl(&format!("http://{health}/live"));
    assert_eq!(code, 200);

    // The key is PostgreSQL's and nobody else's.
    {
        use std::os::unix::fs::MetadataExt;
        let key = std::fs::metadata(db_certs.join("svid_key.pem")).unwrap();
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
        if pg.runs_as_postgres() {
            let postgres_uid = nix_uid_of("postgres");
            assert_eq!(key.uid(), postgres_uid, "the key belongs to postgres");
        }
        let cert = std::fs::metadata(db_certs.join("svid.pem")).unwrap();
        assert_eq!(cert.permissions().mode() & 0o777, 0o644);
    }

    // PostgreSQL configured with the example files, as they are.
    pg.append_conf(
        "postgresql.conf",
        &example("postgresql.conf").replace("/run/signet/postgres", db_certs.to_str().unwrap()),
    );
    pg.replace_conf(
        "pg_hba.conf",
        &format!("local all signet trust\n{}", example("pg_hba.conf")),
    );
    pg.replace_conf("pg_ident.conf", &example("pg_ident.conf"));
    pg.start_server();
    admin_sql(
        &pg,
        "CREATE ROLE app LOGIN; CREATE TABLE orders (id int, item text); \
         INSERT INTO orders VALUES (1, 'coffee'); GRANT SELECT ON orders TO app;",
    );
    assert_eq!(
        server_serial(pg.port).as_deref(),
        Some(first_serial.as_str())
    );

    // The client's SVID, written once (an init step), as its own workload.
    let app_certs = dir.join("app-certs");
    let reports_certs = dir.join("reports-certs");
    for (bin, certs) in [(&app_bin, &app_certs), (&reports_bin, &reports_certs)] {
        std::fs::create_dir(certs).unwrap();
        let cfg = helper_config(
            dir,
            "app-helper.toml",
            &[("/run/signet/app", certs.to_str().unwrap())],
        );
        let out = Command::new(bin)
            .args(["helper", "--once", "--output", "json", "--config"])
            .arg(&cfg)
            .env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{}", c.agent))
            .env("SIGNET_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "helper --once: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"x509_written\""));
    }

    // The app logs in by its SVID, as the role pg_ident.conf maps its CN to.
    let app_serial = file_serial(&app_certs.join("svid.pem"));
    let out = psql(
        &pg,
        &app_certs,
        "app",
        "SELECT current_user, item, client_dn, client_serial \
         FROM orders, pg_stat_ssl WHERE id = 1 AND pid = pg_backend_pid()",
    );
    assert!(
        out.status.success(),
        "app login: {}\n{}",
        text(&out),
        pg.log()
    );
    let row = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let app_serial = u128::from_str_radix(&app_serial, 16).unwrap();
    let fields: Vec<&str> = row.split('|').collect();
    assert_eq!(fields[..2], ["app", "coffee"], "{row}");
    assert!(fields[2].ends_with("/CN=app.example.org"), "{row}");
    assert_eq!(
        fields[3],
        app_serial.to_string(),
        "the server saw the app's SVID"
    );

    // Another identity, with a valid SVID of the same trust domain, is refused.
    let out = psql(&pg, &reports_certs, "app", "SELECT 1");
    assert!(!out.status.success(), "reports got in: {}", text(&out));
    assert!(
        text(&out).contains("certificate authentication failed for user \"app\""),
        "{}",
        text(&out)
    );
    // And the app's SVID is no way in for a role it is not mapped to.
    let out = psql(&pg, &app_certs, "signet", "SELECT 1");
    assert!(!out.status.success(), "app became signet: {}", text(&out));

    // Rotation: the helper writes the database's new SVID and signals the
    // postmaster; new connections get the new certificate.
    let deadline = Instant::now() + Duration::from_secs(90);
    let new_serial = loop {
        let on_disk = file_serial(&db_certs.join("svid.pem"));
        if on_disk != first_serial && server_serial(pg.port).as_deref() == Some(on_disk.as_str()) {
            break on_disk;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL still presents {:?} (file {on_disk}, first {first_serial}); helper:\n{}\npostgres:\n{}",
            server_serial(pg.port),
            db_helper.seen.join("\n"),
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    db_helper.wait_for("sent SIGHUP to pid");
    let out = psql(&pg, &app_certs, "app", "SELECT current_user");
    assert!(
        out.status.success(),
        "app login after rotation: {}",
        text(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app");
    assert_eq!(server_serial(pg.port).as_deref(), Some(new_serial.as_str()));
    let (code, body) = curl(&format!("http://{health}/ready"));
    assert_eq!(code, 200, "{body}");
}

fn nix_uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Without an agent the helper keeps retrying, says why on /ready, and
/// writes the files as soon as the agent comes up; `--once` gives up after
/// its timeout with the reason.
#[test]
fn the_helper_waits_for_an_unreachable_agent_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let socket = dir.join("agent.sock");
    let certs = dir.join("certs");
    std::fs::create_dir(&certs).unwrap();

    let out = signet()
        .args(["helper", "--once", "--timeout", "1s", "--socket"])
        .arg(&socket)
        .arg("--dir")
        .arg(&certs)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "no X509-SVID from the Workload API at {} within 1s",
            socket.display()
        )) && err.contains("cannot reach"),
        "{err}"
    );

    let out = signet()
        .args(["helper", "--dir"])
        .arg(dir.join("missing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "dir {}: No such file or directory",
            dir.join("missing").display()
        )),
        "{err}"
    );

    let mut cmd = signet();
    cmd.args(["helper", "--output", "json", "--socket"])
        .arg(&socket)
        .arg("--dir")
        .arg(&certs)
        .args(["--health-listen", "127.0.0.1:0", "--jwt-audience", "db"]);
    let mut helper = Proc::spawn("helper", cmd, dir);
    let health = health_addr(&mut helper);
    let body = common::eventually("/ready to answer", || {
        let (code, body) = curl(&format!("http://{health}/ready"));
        (code == 503).then_some(body)
    });
    assert!(body.contains("cannot reach the Workload API"), "{body}");
    assert!(std::fs::read_dir(&certs).unwrap().next().is_none());

    let c = Combined::start(dir, &[]);
    assert_eq!(c.agent, socket.display().to_string());
    let sel = format!("unix:uid:{}", uid());
    let out = c.admin(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/late",
        "--selector",
        &sel,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    helper.wait_for("\"x509_written\"");
    helper.wait_for("\"jwt_written\"");
    let token = std::fs::read_to_string(certs.join("jwt_svid.token")).unwrap();
    let out = c.api(&[
        "validate",
        "jwt",
        "--audience",
        "db",
        "--token",
        token.trim(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/late"));
    let body = common::eventually("/ready to turn ready", || {
        let (code, body) = curl(&format!("http://{health}/ready"));
        (code == 200).then_some(body)
    });
    assert!(body.contains("spiffe://example.org/late"), "{body}");
}
