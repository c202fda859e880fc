//! docker-compose.yml and the Dockerfile, checked without a Docker engine:
//! the compose file is valid for a real compose implementation (Debian's
//! docker-compose, installed by scripts/test), every file it mounts exists,
//! every config parses with the tool that will read it (`envoy --mode
//! validate`, `signet ... --check-config`), the entries and the bootstrap
//! script agree with the CLI, the uids of the services match the entries'
//! selectors, and the Dockerfile builds the binary this workspace makes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `signet <args>` from the checkout (relative paths resolve there).
fn signet_here(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(args)
        .current_dir(root())
        .env("SIGNET_LOG", "warn")
        .output()
        .unwrap()
}

/// The services of docker-compose.yml, each with its lines (a service is
/// a two-space-indented key under `services:`).
fn services(compose: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_services = false;
    let mut current = None;
    for line in compose.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty() {
            in_services = line.trim_end() == "services:";
            current = None;
            continue;
        }
        if !in_services {
            continue;
        }
        if let Some(name) = line
            .strip_prefix("  ")
            .filter(|l| !l.starts_with(' ') && !l.starts_with('#'))
            .and_then(|l| l.strip_suffix(':'))
        {
            current = Some(name.to_string());
            out.entry(name.to_string()).or_default();
        } else if let Some(name) = &current {
            out.get_mut(name).unwrap().push(line.trim().to_string());
        }
    }
    out
}

/// The first quoted word of a `key: [ "a", ... ]` line.
fn first_word<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    let line = lines.iter().find(|l| l.starts_with(key))?;
    line.split('"').nth(1)
}

#[test]
fn compose_file_is_valid_for_docker_compose() {
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(root())
        .output()
        .expect("docker-compose (scripts/test installs Debian's docker-compose)");
    ok("docker-compose config", &out);
}

#[test]
fn every_mounted_file_exists_and_every_service_is_healthy_or_one_shot() {
    let compose = read("docker-compose.yml");
    let mut mounts = BTreeSet::new();
    for line in compose.lines() {
        let line = line.trim().trim_start_matches("- ");
        if let Some(host) = line.strip_prefix("./").and_then(|l| l.split(':').next()) {
            mounts.insert(host.to_string());
        }
    }
    assert!(mounts.len() >= 10, "bind mounts found: {mounts:?}");
    for m in &mounts {
        assert!(
            root().join(m).exists(),
            "docker-compose.yml mounts ./{m}, which does not exist"
        );
    }
    let one_shots = ["bootstrap", "opa-build", "reporting"];
    for (name, lines) in services(&compose) {
        let healthy = lines.iter().any(|l| l == "healthcheck:");
        assert!(
            healthy || one_shots.contains(&name.as_str()),
            "service {name} has no healthcheck"
        );
    }
}

#[test]
fn the_dockerfile_builds_this_workspace_binary() {
    let docker = read("Dockerfile");
    assert!(
        docker.contains("cargo build --release --locked --bin signet"),
        "the Dockerfile must build --bin signet with --locked"
    );
    let cargo: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    assert_eq!(cargo["package"]["name"].as_str(), Some("signet"));
    assert!(
        Path::new(env!("CARGO_BIN_EXE_signet")).ends_with("signet"),
        "the binary target is named signet"
    );
    // Every stage compose builds exists, and the runtime stage runs as a
    // non-root user with the binary as its entrypoint.
    let compose = read("docker-compose.yml");
    for target in ["runtime", "tools"] {
        assert!(compose.contains(&format!("target: {target}")));
        assert!(
            docker.contains(&format!(" AS {target}")),
            "Dockerfile has no stage {target}"
        );
    }
    let runtime = docker.split(" AS runtime").nth(1).unwrap();
    assert!(
        runtime.contains("USER 10001"),
        "runtime stage must not run as root"
    );
    assert!(runtime.contains(r#"ENTRYPOINT ["/usr/local/bin/signet"]"#));
    // Every .dockerignore'd path keeps the build context small, not the sources.
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    assert!(
        !ignore
            .lines()
            .any(|l| ["src/", "Cargo.lock", "policy/"].contains(&l.trim()))
    );
}

#[test]
fn compose_commands_are_signet_subcommands() {
    let help = ok("signet --help", &signet_here(&["--help"]));
    let subcommands: BTreeSet<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let compose = read("docker-compose.yml");
    let mut checked = 0;
    for (name, lines) in services(&compose) {
        if !lines.iter().any(|l| l == "<<: *signet") {
            continue;
        }
        let sub = first_word(&lines, "command:").unwrap_or_else(|| panic!("{name}: no command"));
        assert!(
            subcommands.contains(sub),
            "service {name} runs `signet {sub}`, not in {subcommands:?}"
        );
        for l in lines.iter().filter(|l| l.starts_with("test:")) {
            if l.contains("/usr/local/bin/signet") {
                let words: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
                let at = words
                    .iter()
                    .position(|w| *w == "/usr/local/bin/signet")
                    .unwrap();
                let sub = words[at + 1];
                let out = signet_here(&[sub, "--help"]);
                ok(&format!("{name}'s healthcheck `signet {sub}`"), &out);
                for flag in words.iter().filter(|w| w.starts_with("--")) {
                    assert!(
                        String::from_utf8_lossy(&out.stdout).contains(flag),
                        "{name}'s healthcheck uses {flag}, which `signet {sub}` lacks"
                    );
                }
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 6, "signet services found");
}

#[test]
fn envoy_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    let envoy = envoy::binary(dir.path());
    let out = Command::new(envoy)
        .args(["--mode", "validate", "-c"])
        .arg(root().join("deploy/compose/envoy.yaml"))
        .output()
        .unwrap();
    ok("envoy --mode validate deploy/compose/envoy.yaml", &out);
}

/// A config with the paths that only exist once the stack runs (volumes
/// filled by other services) pointed at stand-ins.
fn with_stand_ins(rel: &str, dir: &Path, swaps: &[(&str, &Path)]) -> PathBuf {
    let mut text = read(rel);
    for (from, to) in swaps {
        assert!(text.contains(from), "{rel} no longer mentions {from}");
        text = text.replace(from, &to.display().to_string());
    }
    let path = dir.join(Path::new(rel).file_name().unwrap());
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_signet_config_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        "server --check-config",
        &signet_here(&[
            "server",
            "--config",
            "deploy/compose/server.toml",
            "--check-config",
        ]),
    );

    // The agent: the bundle and token come from the bootstrap service.
    let bundle = d.join("bundle.pem");
    std::fs::write(&bundle, signet_testkit::pki::TestCa::new("bootstrap").pem).unwrap();
    let agent = with_stand_ins(
        "deploy/compose/agent.toml",
        d,
        &[("/run/signet/bootstrap/bundle.pem", &bundle)],
    );
    let agent = agent.to_str().unwrap();
    ok(
        "agent --check-config",
        &signet_here(&["agent", "--config", agent, "--check-config"]),
    );
    // Run for real, the token file is read at start and named when absent
    // or empty (before any connection is tried).
    let missing = signet_here(&["agent", "--config", agent]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("join_token_file /run/signet/bootstrap/join-token"),
        "{err}"
    );
    let empty = d.join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let out = signet_here(&[
        "agent",
        "--config",
        agent,
        "--join-token-file",
        empty.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("empty"),
        "{out:?}"
    );

    // The sidecars: the app's policy is the Rego the OPA step compiles.
    let rego = root().join("policy/rego");
    let app = with_stand_ins(
        "deploy/compose/app-proxy.toml",
        d,
        &[("/run/signet/policy/bundle.tar.gz", &rego)],
    );
    let out = ok(
        "app-proxy --check-config",
        &signet_here(&["proxy", "--config", app.to_str().unwrap(), "--check-config"]),
    );
    assert!(out.contains("configuration is valid"), "{out}");
    ok(
        "client-proxy --check-config",
        &signet_here(&[
            "proxy",
            "--config",
            "deploy/compose/client-proxy.toml",
            "--check-config",
        ]),
    );

    // The helpers write into volumes.
    for (rel, vol) in [
        ("deploy/compose/db-helper.toml", "/run/signet/postgres"),
        (
            "deploy/compose/reporting-helper.toml",
            "/run/signet/reporting",
        ),
    ] {
        let out_dir = d.join(Path::new(vol).file_name().unwrap());
        std::fs::create_dir(&out_dir).unwrap();
        let cfg = with_stand_ins(rel, d, &[(vol, &out_dir)]);
        ok(
            &format!("{rel} --check-config"),
            &signet_here(&[
                "helper",
                "--config",
                cfg.to_str().unwrap(),
                "--check-config",
            ]),
        );
    }
}

#[test]
fn entries_bootstrap_and_uids_agree() {
    let entries: serde_json::Value =
        serde_json::from_str(&read("deploy/compose/entries.json")).unwrap();
    let compose = read("docker-compose.yml");
    let services = services(&compose);
    let uids: BTreeSet<String> = services
        .values()
        .filter(|lines| {
            lines
                .iter()
                .any(|l| l.starts_with("pid: \"service:agent\""))
        })
        .filter_map(|lines| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix("user: \""))
                .and_then(|u| u.split(':').next())
                .map(str::to_string)
        })
        .collect();
    let selected: BTreeSet<String> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["selectors"].as_array().unwrap().clone())
        .filter_map(|s| {
            s.as_str()
                .and_then(|s| s.strip_prefix("unix:uid:"))
                .map(str::to_string)
        })
        .collect();
    // Every uid an entry selects is a workload in the agent's pid namespace
    // (the postgres image's 999 is the database helper's).
    for uid in &selected {
        assert!(
            uids.contains(uid),
            "entry selects unix:uid:{uid}; no such workload service ({uids:?})"
        );
    }

    // The entries load into a real server, and `token generate` prints
    // what bootstrap.sh strips.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Combined::start(dir.path(), &[]);
    let out = c.admin(&[
        "entry",
        "create",
        "--data",
        root().join("deploy/compose/entries.json").to_str().unwrap(),
    ]);
    ok("entry create --data entries.json", &out);
    let count = ok("entry count", &c.admin(&["entry", "count"]));
    assert!(
        count.contains(&entries["entries"].as_array().unwrap().len().to_string()),
        "{count}"
    );
    let token = ok(
        "token generate",
        &c.admin(&[
            "token",
            "generate",
            "--spiffe-id",
            "spiffe://example.org/node/compose",
            "--ttl",
            "1h",
        ]),
    );
    assert!(
        token.starts_with("Token: "),
        "bootstrap.sh expects `Token: <token>`: {token:?}"
    );
    let script = root().join("deploy/compose/bootstrap.sh");
    ok(
        "sh -n bootstrap.sh",
        &Command::new("sh").arg("-n").arg(&script).output().unwrap(),
    );
}

/// The top-level named volumes, each with the uid its tmpfs `driver_opts`
/// give it (`o: "uid=N,..."`), if any.
fn named_volumes(compose: &str) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    let mut in_volumes = false;
    let mut current = None;
    for line in compose.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty() {
            in_volumes = line.trim_end() == "volumes:";
            continue;
        }
        if !in_volumes {
            continue;
        }
        if let Some(name) = line
            .strip_prefix("  ")
            .filter(|l| !l.starts_with(' ') && !l.starts_with('#'))
            .and_then(|l| l.strip_suffix(':'))
        {
            out.insert(name.to_string(), None);
            current = Some(name.to_string());
        } else if let (Some(name), Some(opts)) = (&current, line.split("uid=").nth(1)) {
            let uid: String = opts.chars().take_while(char::is_ascii_digit).collect();
            out.insert(name.clone(), Some(uid));
        }
    }
    out
}

/// The text of the Dockerfile stage `name`, split into words.
fn stage_words(dockerfile: &str, name: &str) -> BTreeSet<String> {
    let stage = dockerfile
        .split(&format!(" AS {name}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("Dockerfile has no stage {name}"));
    let stage = stage.split("\nFROM ").next().unwrap_or(stage);
    stage.split_whitespace().map(str::to_string).collect()
}

/// A fresh named volume is owned by root unless the image has a directory
/// at the mount point (Docker copies its owner) or it is a tmpfs with
/// `uid=`. Without an engine nothing else would notice a service that
/// cannot write its own volume, so: every named volume a non-root service
/// mounts writable is a tmpfs owned by that uid, or (for the signet images,
/// uid 10001) mounted on a directory both signet images create.
#[test]
fn non_root_services_own_the_volumes_they_write() {
    let compose = read("docker-compose.yml");
    let docker = read("Dockerfile");
    let volumes = named_volumes(&compose);
    assert!(
        volumes.contains_key("bootstrap"),
        "named volumes: {volumes:?}"
    );
    let image_dirs = [
        ("runtime", stage_words(&docker, "runtime")),
        ("tools", stage_words(&docker, "tools")),
    ];
    let mut checked = 0;
    for (name, lines) in services(&compose) {
        let signet_image = lines
            .iter()
            .any(|l| l == "<<: *signet" || l.starts_with("image: signet"));
        let uid = match lines.iter().find_map(|l| l.strip_prefix("user: \"")) {
            Some(u) => u.split([':', '"']).next().unwrap_or_default().to_string(),
            None if signet_image => "10001".to_string(),
            // Other images start as root and drop privileges themselves.
            None => continue,
        };
        if uid == "0" {
            continue;
        }
        let mounts = lines
            .iter()
            .skip_while(|l| *l != "volumes:")
            .skip(1)
            .map_while(|l| l.strip_prefix("- "));
        for mount in mounts {
            let mut parts = mount.split(':');
            let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
                continue;
            };
            if source.starts_with('.') || source.starts_with('/') || parts.next() == Some("ro") {
                continue;
            }
            let owner = volumes
                .get(source)
                .unwrap_or_else(|| panic!("{name} mounts undeclared volume {source}"));
            let owned = match owner {
                Some(tmpfs_uid) => tmpfs_uid == &uid,
                None => {
                    uid == "10001"
                        && signet_image
                        && image_dirs.iter().all(|(_, words)| words.contains(target))
                }
            };
            assert!(
                owned,
                "service {name} (uid {uid}) writes volume {source} at {target}, which \
                 would be owned by root: make it a tmpfs with uid={uid}, or create \
                 {target} (owned by 10001) in both signet images"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "only {checked} writable volume mounts checked"
    );
}
