//! Where the agent and admin sockets are, and what clients do with them:
//! one rule for every command (flag, environment, config file, default),
//! defaults under /run/signet when run as root, clients that refuse sockets
//! served by other users, and errors that say what a wrong socket is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Output;

use common::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = signet();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn succeeds(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", stderr(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_command_takes_its_sockets_by_one_rule() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // A config file names both sockets (in both written forms); the
    // environment names another agent socket, which wins over the file.
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{d}/data\"\nbind_address = \"127.0.0.1:0\"\nadmin_socket = \"unix://{d}/cfg-admin.sock\"\nagent_socket = \"{d}/cfg-agent.sock\"\n"
        ),
    )
    .unwrap();
    let mut cmd = signet();
    cmd.arg("run").arg("--config").arg(&config).env(
        "SPIFFE_ENDPOINT_SOCKET",
        format!("unix://{d}/env-agent.sock"),
    );
    let mut server = Proc::spawn("signet-run", cmd, dir.path());
    let banner = server.wait_for("Press Ctrl-C");
    let admin = format!("{d}/cfg-admin.sock");
    let agent = format!("{d}/env-agent.sock");
    assert!(
        banner.contains(&format!("admin socket   {admin}")),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("agent socket   {agent}")),
        "{banner}"
    );
    assert!(!Path::new(&format!("{d}/cfg-agent.sock")).exists());

    // Admin clients: the flag (bare, unix:// and unix: forms, and the older
    // --socket), and the environment.
    for flag in [
        "--admin-socket".to_string(),
        "--socket".to_string(),
        "--admin-socket".to_string(),
    ] {
        for value in [
            admin.clone(),
            format!("unix://{admin}"),
            format!("unix:{admin}"),
        ] {
            succeeds(
                &run(&["entry", "show", &flag, &value]),
                &format!("entry show {flag} {value}"),
            );
        }
    }
    succeeds(
        &run_env(
            &["entry", "show"],
            &[("SIGNET_ADMIN_SOCKET", &format!("unix://{admin}"))],
        ),
        "entry show with SIGNET_ADMIN_SOCKET",
    );
    // The flag beats the environment.
    succeeds(
        &run_env(
            &["entry", "show", "--admin-socket", &admin],
            &[("SIGNET_ADMIN_SOCKET", "/nowhere/admin.sock")],
        ),
        "the flag over SIGNET_ADMIN_SOCKET",
    );

    // Workload clients: every form of the flag and both variables, the
    // Signet one first.
    let uid = uid();
    let ok_entry = run(&[
        "entry",
        "create",
        "--admin-socket",
        &admin,
        "--spiffe-id",
        "spiffe://example.org/sockets",
        "--selector",
        &format!("unix:uid:{uid}"),
    ]);
    succeeds(&ok_entry, "entry create");
    for args in [
        vec!["api", "fetch", "bundle", "--agent-socket", &agent],
        vec!["api", "fetch", "bundle", "--socket", &agent],
    ] {
        succeeds(&run(&args), &args.join(" "));
    }
    let unix_form = format!("unix://{agent}");
    succeeds(
        &run(&["api", "fetch", "bundle", "--agent-socket", &unix_form]),
        "--agent-socket unix://",
    );
    succeeds(
        &run_env(
            &["api", "fetch", "bundle"],
            &[("SPIFFE_ENDPOINT_SOCKET", &unix_form)],
        ),
        "SPIFFE_ENDPOINT_SOCKET",
    );
    succeeds(
        &run_env(
            &["api", "fetch", "bundle"],
            &[
                ("SIGNET_AGENT_SOCKET", &agent),
                ("SPIFFE_ENDPOINT_SOCKET", "unix:///nowhere/agent.sock"),
            ],
        ),
        "SIGNET_AGENT_SOCKET over SPIFFE_ENDPOINT_SOCKET",
    );
    let out = run_env(
        &["api", "fetch", "bundle"],
        &[("SPIFFE_ENDPOINT_SOCKET", "tcp://127.0.0.1:1")],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("$SPIFFE_ENDPOINT_SOCKET"),
        "{}",
        stderr(&out)
    );

    // The helper and the proxy: the environment beats their config file's
    // agent_socket; the flag beats both.
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let helper_cfg = dir.path().join("helper.toml");
    std::fs::write(
        &helper_cfg,
        format!(
            "agent_socket = \"/nowhere/agent.sock\"\ndir = \"{}\"\n",
            out_dir.display()
        ),
    )
    .unwrap();
    let helper = ["helper", "--once", "--config", helper_cfg.to_str().unwrap()];
    succeeds(
        &run_env(&helper, &[("SPIFFE_ENDPOINT_SOCKET", &unix_form)]),
        "helper: the environment over the config file",
    );
    assert!(out_dir.join("svid.pem").exists());
    let mut with_flag = helper.to_vec();
    with_flag.extend(["--agent-socket", &agent]);
    succeeds(
        &run_env(
            &with_flag,
            &[("SPIFFE_ENDPOINT_SOCKET", "unix:///nowhere/x.sock")],
        ),
        "helper: the flag over the environment",
    );
    let proxy_cfg = dir.path().join("proxy.toml");
    std::fs::write(
        &proxy_cfg,
        "agent_socket = \"unix:///from/config.sock\"\n[[listener]]\nmode = \"inbound\"\nlisten = \"127.0.0.1:1\"\nto = \"127.0.0.1:2\"\nallow_id = [\"spiffe://example.org/x\"]\n",
    )
    .unwrap();
    let check = [
        "proxy",
        "--config",
        proxy_cfg.to_str().unwrap(),
        "--check-config",
    ];
    let out = succeeds(&run(&check), "proxy --check-config");
    assert!(out.contains("Workload API at /from/config.sock"), "{out}");
    let out = succeeds(
        &run_env(&check, &[("SIGNET_AGENT_SOCKET", "/from/env.sock")]),
        "proxy --check-config with SIGNET_AGENT_SOCKET",
    );
    assert!(out.contains("Workload API at /from/env.sock"), "{out}");

    // `signet server` has no agent socket: its config key is refused there.
    let out = run(&[
        "server",
        "--config",
        config.to_str().unwrap(),
        "--check-config",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("agent_socket: only `signet run`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_wrong_socket_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    // The agent socket given to an admin command, and the reverse.
    let out = run(&["entry", "show", "--admin-socket", &c.agent]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{} does not serve the admin API", c.agent))
            && err.contains("is it an agent socket?"),
        "{err}"
    );
    let out = run(&["api", "fetch", "x509", "--agent-socket", &c.admin]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{} does not serve the Workload API", c.admin))
            && err.contains("admin socket"),
        "{err}"
    );
    let out = run(&["healthcheck", "--agent", "--agent-socket", &c.admin]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not serve the Workload API"),
        "{}",
        stderr(&out)
    );
    // Nothing there, and a socket file nobody serves.
    let missing = dir.path().join("missing.sock").display().to_string();
    let out = run(&["entry", "show", "--admin-socket", &missing]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("no socket at {missing}"))
            && err.contains("from --admin-socket")
            && err.contains("is signet server or signet run running?"),
        "{err}"
    );
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = run(&[
        "api",
        "fetch",
        "bundle",
        "--agent-socket",
        stale.to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("nothing is serving"),
        "{}",
        stderr(&out)
    );
}

/// Runs `signet run` as `uid` with its data and sockets in `home`, a
/// directory of that user's.
fn run_as(uid: u32, home: &Path, bin: &Path, log_dir: &Path) -> Proc {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["run", "--data-dir"])
        .arg(home.join("data"))
        .arg("--admin-socket")
        .arg(home.join("admin.sock"))
        .arg("--agent-socket")
        .arg(home.join("agent.sock"))
        .args(["--bind-address", "127.0.0.1:0"])
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .current_dir(home)
        .uid(uid)
        .gid(uid);
    let mut proc = Proc::spawn("signet-run-other", cmd, log_dir);
    proc.wait_for("Press Ctrl-C");
    proc
}

#[test]
#[ignore = "needs root: a server of another uid (scripts/test runs it as root)"]
fn clients_refuse_sockets_another_user_serves_unless_trusted() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = signet_for_others(dir.path());
    let home = dir.path().join("nobody");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let _theirs = run_as(65534, &home, &bin, dir.path());
    let admin = home.join("admin.sock").display().to_string();
    let agent = home.join("agent.sock").display().to_string();

    // Root connects (it may), sees who serves the socket and refuses.
    for args in [
        vec!["entry", "show", "--admin-socket", &admin],
        vec!["bundle", "show", "--admin-socket", &admin],
        vec!["api", "fetch", "bundle", "--agent-socket", &agent],
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} used another user's socket");
        let err = stderr(&out);
        assert!(
            err.contains("served by a process of uid 65534")
                && err.contains("--trust-socket-owner 65534"),
            "{args:?}: {err}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"));
    }
    // The same through the helper's watcher, which reports the refusal
    // when it gives up.
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = run(&[
        "helper",
        "--once",
        "--timeout",
        "1s",
        "--dir",
        out_dir.to_str().unwrap(),
        "--agent-socket",
        &agent,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("served by a process of uid 65534"),
        "{}",
        stderr(&out)
    );
    assert!(!out_dir.join("bundle.pem").exists());

    // Trusted by flag (uid or name) or by the environment, it works.
    succeeds(
        &run(&[
            "--trust-socket-owner",
            "65534",
            "entry",
            "show",
            "--admin-socket",
            &admin,
        ]),
        "--trust-socket-owner 65534",
    );
    succeeds(
        &run(&[
            "bundle",
            "show",
            "--admin-socket",
            &admin,
            "--trust-socket-owner",
            "nobody",
        ]),
        "--trust-socket-owner nobody",
    );
    succeeds(
        &run(&[
            "--trust-socket-owner=65534",
            "entry",
            "create",
            "--admin-socket",
            &admin,
            "--spiffe-id",
            "spiffe://example.org/root",
            "--selector",
            "unix:uid:0",
        ]),
        "entry create",
    );
    let out = succeeds(
        &run_env(
            &["api", "fetch", "bundle", "--agent-socket", &agent],
            &[("SIGNET_TRUST_SOCKET_OWNER", "nobody")],
        ),
        "SIGNET_TRUST_SOCKET_OWNER",
    );
    assert!(out.contains("BEGIN CERTIFICATE"), "{out}");
    let out = run(&["--trust-socket-owner", "no-such-user-here", "entry", "show"]);
    assert!(stderr(&out).contains("--trust-socket-owner \"no-such-user-here\": no such user"));

    // The other way round: root's admin socket (0600) as nobody says
    // permission denied and whose it is, not "is the server running?".
    let roots = dir.path().join("root");
    std::fs::create_dir(&roots).unwrap();
    std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Combined::start(&roots, &[]);
    let out = std::process::Command::new(&bin)
        .args(["entry", "show", "--admin-socket", &c.admin])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("permission denied on {}", c.admin))
            && err.contains("owner uid 0")
            && err.contains("this is uid 65534")
            && !err.contains("running?"),
        "{err}"
    );
}

#[test]
#[ignore = "needs root: another uid, and a mount namespace over /run and /tmp (scripts/test runs it as root)"]
fn as_root_the_sockets_default_to_run_signet_where_clients_look_first() {
    require_root();
    // A private mount namespace with empty /run and /tmp, so the defaults
    // are this test's alone. The binary is copied to /run first: /tmp may
    // hold it, and is hidden next.
    let script = r#"
set -eu
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mkdir -m 0755 /run/bin
cp "$SIGNET" /run/bin/signet
mount -t tmpfs tmpfs /tmp
S=/run/bin/signet
wait_for() { n=0; until [ -S "$1" ]; do n=$((n+1)); [ $n -lt 600 ] || { echo "no $1"; exit 1; }; sleep 0.05; done; }
$S run --data-dir /run/data --bind-address 127.0.0.1:0 > /run/banner 2>/run/run.log &
ROOT=$!
trap 'kill $ROOT ${NOBODY:-} 2>/dev/null || true' EXIT
wait_for /run/signet/agent.sock
wait_for /run/signet/private/admin.sock
until grep -q "Press Ctrl-C" /run/banner; do sleep 0.05; done
echo "== banner"; cat /run/banner
echo "== modes"; stat -c '%n %a %U' /run/signet /run/signet/private /run/signet/private/admin.sock
echo "== root client"; $S entry show --output json
$S entry create --spiffe-id spiffe://example.org/nobody --selector unix:uid:65534 >/dev/null
echo "== nobody client"; setpriv --reuid 65534 --regid 65534 --clear-groups $S api fetch x509 --output json | head -c 300; echo
# A server of another user takes /tmp/signet; clients still look in /run first.
mkdir -m 0700 /tmp/nobody && chown 65534:65534 /tmp/nobody
setpriv --reuid 65534 --regid 65534 --clear-groups sh -c "cd /tmp/nobody && exec $S run --data-dir /tmp/nobody/data --bind-address 127.0.0.1:0" > /tmp/nobody/banner 2>/tmp/nobody/run.log &
NOBODY=$!
wait_for /tmp/signet/private/admin.sock
until grep -q "Press Ctrl-C" /tmp/nobody/banner; do sleep 0.05; done
echo "== nobody banner"; cat /tmp/nobody/banner
echo "== nobody default client"; setpriv --reuid 65534 --regid 65534 --clear-groups $S entry show --output json 2>&1 || true
echo "== end"
"#;
    let out = std::process::Command::new("unshare")
        .args(["--mount", "sh", "-c", script])
        .env("SIGNET", env!("CARGO_BIN_EXE_signet"))
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env_remove("SIGNET_AGENT_SOCKET")
        .env_remove("SIGNET_ADMIN_SOCKET")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("== end"),
        "{text}\n{}",
        stderr(&out)
    );
    let section = |name: &str| {
        let start = text.find(&format!("== {name}\n")).unwrap() + name.len() + 4;
        let rest = &text[start..];
        rest[..rest.find("\n== ").unwrap_or(rest.len())].to_string()
    };
    let banner = section("banner");
    assert!(
        banner.contains("admin socket   /run/signet/private/admin.sock"),
        "{banner}"
    );
    assert!(
        banner.contains("agent socket   /run/signet/agent.sock"),
        "{banner}"
    );
    // Clients find these by default: the printed commands need no flag.
    assert!(banner.contains("  signet entry show\n"), "{banner}");
    assert!(banner.contains("  signet api fetch x509\n"), "{banner}");
    let modes = section("modes");
    assert!(modes.contains("/run/signet 755 root"), "{modes}");
    assert!(modes.contains("/run/signet/private 700 root"), "{modes}");
    assert!(
        modes.contains("/run/signet/private/admin.sock 600 root"),
        "{modes}"
    );
    assert!(section("root client").contains("\"entries\""), "{text}");
    assert!(
        section("nobody client").contains("spiffe://example.org/nobody"),
        "{text}"
    );
    // Not root: /tmp/signet. nobody's clients cannot see root's admin
    // socket (/run/signet/private is 0700), so they find nobody's; they do
    // see root's agent socket and look there first, so the printed
    // Workload API commands name the socket.
    let theirs = section("nobody banner");
    assert!(
        theirs.contains("admin socket   /tmp/signet/private/admin.sock"),
        "{theirs}"
    );
    assert!(
        theirs.contains("agent socket   /tmp/signet/agent.sock"),
        "{theirs}"
    );
    assert!(theirs.contains("  signet entry show\n"), "{theirs}");
    assert!(
        theirs.contains("  signet api fetch x509 --agent-socket /tmp/signet/agent.sock\n"),
        "{theirs}"
    );
    let client = section("nobody default client");
    assert!(client.contains("\"entries\""), "{client}");
}
