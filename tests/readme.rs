//! The README's commands, and the examples', run as written, so the docs
//! cannot drift from what Signet does. Every code block marked
//! `<!-- tests/readme.rs: NAME -->` (or `NAME (root)`, run as root only)
//! runs with `sh -e` from the repository's folder against a fresh
//! `signet run` started as the README says (no flags), in private mount and
//! network namespaces: the default sockets (/run/signet, /tmp/signet), the
//! data dir and the fixed ports of the docs are this test's alone; and a pid
//! namespace, so nothing a block starts outlives the test. Once as root,
//! once as another user.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// The documents whose marked blocks run, in this order.
const DOCS: [(&str, &str); 3] = [
    ("README.md", include_str!("../README.md")),
    (
        "examples/envoy/README.md",
        include_str!("../examples/envoy/README.md"),
    ),
    (
        "examples/postgres/README.md",
        include_str!("../examples/postgres/README.md"),
    ),
];
const MARK: &str = "<!-- tests/readme.rs: ";

struct Block {
    name: String,
    root_only: bool,
    body: String,
}

/// The marked code blocks of the documents, in order.
fn marked_blocks() -> Vec<Block> {
    let mut blocks = Vec::new();
    for (doc, text) in DOCS {
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let Some(mark) = line.strip_prefix(MARK).and_then(|r| r.strip_suffix(" -->")) else {
                continue;
            };
            let (name, root_only) = match mark.strip_suffix(" (root)") {
                Some(name) => (name, true),
                None => (mark, false),
            };
            assert_eq!(
                lines.next(),
                Some("```sh"),
                "{doc}: the block marked {name} must follow its mark"
            );
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push(Block {
                name: name.to_string(),
                root_only,
                body: body.join("\n") + "\n",
            });
        }
    }
    blocks
}

/// Sets up the namespaces as root, then runs `signet run` and each block
/// (in its own process group, ended afterwards) as `uid`.
const SETUP: &str = r#"
set -eu
mount --make-rprivate /
ip link set lo up
mount -t tmpfs tmpfs /run
mkdir -p /run/bin /run/repo /run/out /run/blocks
cp "$SIGNET" /run/bin/signet-real
# `signet api watch` streams until Ctrl-C; here it stops after 3 s.
cat > /run/bin/signet <<'EOF'
#!/bin/sh
if [ "${1:-} ${2:-}" = "api watch" ]; then
    timeout 3 /run/bin/signet-real "$@" && exit 0
    s=$?; [ $s -eq 124 ] && exit 0; exit $s
fi
exec /run/bin/signet-real "$@"
EOF
chmod 0755 /run/bin/signet /run/bin/signet-real
cp -r "$REPO/policy" "$REPO/examples" /run/repo/
cp "$ENVOY" /run/bin/envoy
cp "$BLOCKS"/*.sh /run/blocks/
cp "$RUNNER" /run/runner.sh
chown -R "$RUN_UID:$RUN_UID" /run/repo /run/out
# The repository may live under /tmp: everything it needs is under /run now.
mount -t tmpfs tmpfs /tmp
if [ "$RUN_UID" = 0 ]; then
    exec sh /run/runner.sh
fi
exec setpriv --reuid "$RUN_UID" --regid "$RUN_UID" --clear-groups sh /run/runner.sh
"#;

const RUNNER: &str = r#"
set -u
export PATH=/run/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/run/out
cd /run/repo
signet run > /run/out/run.out 2> /run/out/run.log &
RUN=$!
n=0
until grep -q "Press Ctrl-C" /run/out/run.out; do
    n=$((n + 1))
    if [ $n -gt 600 ] || ! kill -0 $RUN 2>/dev/null; then
        echo "== FAILED signet run"; cat /run/out/run.out /run/out/run.log; exit 1
    fi
    sleep 0.05
done
echo "== banner"; cat /run/out/run.out
for block in $BLOCK_ORDER; do
    setsid sh -c 'echo $$ > /run/out/pgid; exec sh -ex /run/blocks/'"$block"'.sh' \
        > /run/out/"$block".out 2>&1 < /dev/null &
    status=0; wait $! || status=$?
    # End what the block started (its process group), and wait for it to go.
    group=-"$(cat /run/out/pgid)"
    kill -TERM "$group" 2>/dev/null
    n=0
    while kill -0 "$group" 2>/dev/null; do
        n=$((n + 1)); [ $n -eq 200 ] && kill -KILL "$group" 2>/dev/null
        sleep 0.05
    done
    echo "== $block"; cat /run/out/"$block".out
    if [ $status -ne 0 ]; then echo "== FAILED $block (exit $status)"; cat /run/out/run.log; exit 1; fi
done
kill $RUN; wait $RUN
echo "== end"
"#;

/// Runs the marked blocks in README order as `uid`; returns each block's
/// output (commands traced) and the banner.
fn run_readme_as(uid: u32) -> BTreeMap<String, String> {
    let blocks: Vec<Block> = marked_blocks()
        .into_iter()
        .filter(|b| uid == 0 || !b.root_only)
        .collect();
    let order: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    let dir = tempfile::tempdir().unwrap();
    let block_dir = dir.path().join("blocks");
    std::fs::create_dir(&block_dir).unwrap();
    for b in &blocks {
        std::fs::write(block_dir.join(format!("{}.sh", b.name)), &b.body).unwrap();
    }
    let runner = dir.path().join("runner.sh");
    std::fs::write(&runner, RUNNER).unwrap();
    let out = std::process::Command::new("unshare")
        // A pid namespace too: whatever a failed run leaves behind ends with it.
        .args([
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            SETUP,
        ])
        .env("SIGNET", env!("CARGO_BIN_EXE_signet"))
        .env("REPO", env!("CARGO_MANIFEST_DIR"))
        .env("BLOCKS", &block_dir)
        .env("RUNNER", &runner)
        .env("ENVOY", envoy::binary(dir.path()))
        .env("RUN_UID", uid.to_string())
        .env("BLOCK_ORDER", order.join(" "))
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .env_remove("SIGNET_AGENT_SOCKET")
        .env_remove("SIGNET_ADMIN_SOCKET")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.ends_with("== end\n"),
        "the README's commands failed as uid {uid}:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sections = BTreeMap::new();
    for part in text.split("== ").skip(1) {
        let (name, body) = part.split_once('\n').unwrap_or((part, ""));
        sections.insert(name.to_string(), body.to_string());
    }
    sections
}

fn check(sections: &BTreeMap<String, String>, socket_dir: &str) {
    let banner = &sections["banner"];
    assert!(
        banner.contains(&format!("agent socket   {socket_dir}/agent.sock")),
        "{banner}"
    );
    // The printed commands are the README's: no socket flags needed.
    assert!(banner.contains("  signet entry show\n"), "{banner}");
    let quick = &sections["quickstart"];
    for want in [
        "SPIFFE ID: spiffe://example.org/web",
        "/tmp/web/svid.pem: OK",
        "Written to /tmp/web",
        "spiffe://example.org/web",
    ] {
        assert!(quick.contains(want), "quick start: no {want:?} in\n{quick}");
    }
    let sidecar = &sections["sidecar"];
    let responses: Vec<&str> = sidecar.lines().filter(|l| !l.starts_with('+')).collect();
    assert!(responses.contains(&"hello"), "{sidecar}");
    assert!(
        responses.contains(&"access denied by policy: no route for caller"),
        "{sidecar}"
    );
    let federation = &sections["federation"];
    for want in [
        "Trust domain     : partner.test",
        "* partner.test",
        "* example.org",
    ] {
        assert!(
            federation.contains(want),
            "federation: no {want:?} in\n{federation}"
        );
    }
    let policy = &sections["policy"];
    assert!(policy.lines().any(|l| l == "true"), "{policy}");
    assert!(policy.contains("\"allow\": true"), "{policy}");
    if let Some(postgres) = sections.get("postgres") {
        // The app logged in as role app by its SVID.
        assert!(postgres.lines().any(|l| l == "app"), "{postgres}");
    }
    if let Some(envoy) = sections.get("envoy") {
        let lines: Vec<&str> = envoy.lines().collect();
        assert!(lines.contains(&"hello through two Envoys"), "{envoy}");
        assert!(lines.contains(&"spiffe://example.org/server"), "{envoy}");
    }
}

#[test]
fn the_readme_marks_the_blocks_this_test_runs() {
    let blocks: BTreeMap<String, String> = marked_blocks()
        .into_iter()
        .map(|b| (b.name, b.body))
        .collect();
    for name in ["quickstart", "sidecar", "policy", "envoy", "postgres"] {
        assert!(blocks.contains_key(name), "no block marked {name}");
    }
    // They use the commands the docs promise, not a test's own.
    assert!(blocks["quickstart"].contains("signet api fetch x509"));
    assert!(blocks["sidecar"].contains("signet proxy inbound"));
    assert!(blocks["envoy"].contains("envoy -c examples/envoy/inbound.yaml"));
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("policy/examples/connection-input.json")
            .exists()
    );
}

#[test]
#[ignore = "needs root: mount and network namespaces (scripts/test runs it as root)"]
fn the_readme_runs_as_written_as_root() {
    require_root();
    check(&run_readme_as(0), "/run/signet");
}

#[test]
#[ignore = "needs root: mount and network namespaces, then another uid (scripts/test runs it as root)"]
fn the_readme_runs_as_written_as_another_user() {
    require_root();
    check(&run_readme_as(65534), "/tmp/signet");
}
