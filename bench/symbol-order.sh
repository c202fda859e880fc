#!/usr/bin/env bash
# Regenerates build/symbol-order.txt: the functions a sidecar runs, from
# start through serving connections, which the linker places together at
# the front of the `signet` binary's code (see build.rs).
#
# Why: the kernel maps a file-backed page fault together with its
# neighbours (fault-around, 64 KiB), so code a process runs, spread over a
# 30 MB text segment, made every sidecar map ~13 MiB of it for ~190 faults.
# Packed together, what the sidecar runs is what it maps.
#
# How: both sidecars (inbound with the Rego allow-list, in TCP and HTTP
# mode, and outbound) run under valgrind's callgrind, which records every
# function executed; traffic goes through them, they drain on SIGTERM, and
# the functions of the `signet` binary are written hottest first. Needs
# valgrind (`apt-get install valgrind`), perf, curl and python3. Takes a few
# minutes. Re-run after large dependency changes: names that no longer
# exist are ignored by the linker, new code simply lands after the list.
#
#   bench/symbol-order.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
# Profile a binary linked without the current order, so stale names cannot
# hide anything.
SIGNET_NO_SYMBOL_ORDER=1 cargo build --release --bin signet
bin=target/release/signet
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

wait_for() { # description, command...
    local what=$1; shift
    for _ in $(seq 600); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "timed out waiting for $what" >&2
    exit 1
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SIGNET_LOG=warn valgrind --tool=callgrind --demangle=no --dump-instr=no \
    --callgrind-out-file="$dir/run.cg" \
    "$bin" run --data-dir "$dir/data" --admin-socket "$dir/admin.sock" \
    --socket-path "$dir/agent.sock" --bind-address 127.0.0.1:0 >"$dir/run.log" 2>&1 &
run_pid=$!
pids+=($run_pid)
wait_for "signet run" test -S "$dir/agent.sock" -a -S "$dir/admin.sock"
"$bin" entry create --socket "$dir/admin.sock" \
    --spiffe-id spiffe://example.org/ns/web/sa/profile --selector "unix:uid:$(id -u)" >/dev/null

backend=$(port)
python3 -m http.server "$backend" --bind 127.0.0.1 --directory "$dir" >/dev/null 2>&1 &
pids+=($!)
in_tcp=$(port); in_http=$(port); out_tcp=$(port); out_http=$(port); in_admin=$(port); out_admin=$(port)
echo hello >"$dir/hello.txt"
cat >"$dir/inbound.toml" <<EOF
admin_listen = "127.0.0.1:$in_admin"
[[listener]]
mode = "inbound"
listen = "127.0.0.1:$in_tcp"
to = "127.0.0.1:$backend"
policy = "$PWD/policy/rego/spiffe_allowlist.rego"
max_connections = 20000
[[listener]]
mode = "inbound"
listen = "127.0.0.1:$in_http"
to = "127.0.0.1:$backend"
policy = "$PWD/policy/rego/spiffe_allowlist.rego"
http = true
EOF
cat >"$dir/outbound.toml" <<EOF
admin_listen = "127.0.0.1:$out_admin"
[[listener]]
mode = "outbound"
listen = "127.0.0.1:$out_tcp"
to = "127.0.0.1:$in_tcp"
server_id = "spiffe://example.org/ns/web/sa/profile"
max_connections = 20000
[[listener]]
mode = "outbound"
listen = "127.0.0.1:$out_http"
to = "127.0.0.1:$in_http"
server_id = "spiffe://example.org/ns/web/sa/profile"
EOF
# Two passes over the same traffic: under callgrind, which sees every
# function run but emulates a CPU without AVX-512 or SHA extensions; then
# natively under perf sampling, which adds the CPU-specific variants the
# crypto library picks at run time (AES-GCM, SHA-256, X25519).
traffic() {
    wait_for "the inbound sidecar" curl -sf "http://127.0.0.1:$in_admin/ready"
    wait_for "the outbound sidecar" curl -sf "http://127.0.0.1:$out_admin/ready"
    for _ in $(seq 20); do
        curl -sf "http://127.0.0.1:$out_tcp/hello.txt" | grep -q hello
        curl -sf "http://127.0.0.1:$out_http/hello.txt" | grep -q hello
    done
    head -c 4000000 /dev/zero >"$dir/big.bin"
    for _ in $(seq 5); do
        curl -sf -o /dev/null "http://127.0.0.1:$out_tcp/big.bin"
        curl -sf -o /dev/null "http://127.0.0.1:$out_http/big.bin"
    done
    curl -sf "http://127.0.0.1:$in_admin/metrics" >/dev/null
}
stop_sidecars() { # drain; callgrind writes its profiles on exit
    local n=${#pids[@]}
    kill -TERM "${pids[n-2]}" "${pids[n-1]}"
    wait "${pids[n-2]}" "${pids[n-1]}" || true
}
for side in inbound outbound; do
    SIGNET_LOG=warn valgrind --tool=callgrind --demangle=no --dump-instr=no \
        --callgrind-out-file="$dir/$side.cg" \
        "$bin" proxy --config "$dir/$side.toml" --socket "$dir/agent.sock" \
        >"$dir/$side.log" 2>&1 &
    pids+=($!)
done
traffic
stop_sidecars
for side in inbound outbound; do
    SIGNET_LOG=warn "$bin" proxy --config "$dir/$side.toml" --socket "$dir/agent.sock" \
        >"$dir/$side-native.log" 2>&1 &
    pids+=($!)
done
n=${#pids[@]}
perf record -q -F 20000 -o "$dir/native.perf" -p "${pids[n-2]},${pids[n-1]}" 2>/dev/null &
perf_pid=$!
traffic
kill -INT "$perf_pid"; wait "$perf_pid" || true
stop_sidecars
kill -TERM "$run_pid"
wait "$run_pid" || true
perf script -i "$dir/native.perf" -F ip,sym,dso --no-demangle 2>/dev/null |
    awk '$NF ~ /signet\)$/ { print $2 }' | sort | uniq -c | sort -rn | awk '{ print $2 }' >"$dir/native.txt"

# Functions of the signet binary (callgrind `ob=`/`fn=` records), by
# instructions executed, hottest first; inbound's before outbound's.
python3 - "$dir/native.txt" "$dir/inbound.cg" "$dir/outbound.cg" "$dir/run.cg" >build/symbol-order.txt <<'EOF'
import re, sys

def functions(path):
    """The signet binary's functions in a callgrind profile, by
    instructions executed in each, most first."""
    cost = {}
    names = {}
    obs = {}
    ob = fn = None
    call_cost = False
    for line in open(path, errors="replace"):
        m = re.match(r"(c?ob|c?fn|fl|fi|fe|cfi|cfl)=\((\d+)\)(?: (.*))?", line)
        if m:
            kind, ident, name = m.group(1), m.group(2), m.group(3)
            if kind in ("ob", "cob") and name:
                obs[ident] = name.strip()
            if kind == "ob":
                ob = obs.get(ident)
            elif kind in ("fn", "cfn") and name:
                names[ident] = name.strip()
            if kind == "fn":
                fn = (ob, names.get(ident))
            continue
        if line.startswith("calls="):
            call_cost = True  # the next cost line is the call's, not fn's own
            continue
        if call_cost:
            call_cost = False
            continue
        parts = line.split()
        if fn and fn[0] and fn[0].endswith("/signet") and len(parts) >= 2 \
                and parts[0][0] in "0123456789+-*":
            cost[fn[1]] = cost.get(fn[1], 0) + int(parts[1])
    # callgrind tells recursion levels apart as NAME'2, NAME'3, ...
    merged = {}
    for name, c in cost.items():
        name = re.sub(r"'\d+$", "", name)
        merged[name] = merged.get(name, 0) + c
    ranked = sorted(merged.items(), key=lambda kv: -kv[1])
    return [name for name, _ in ranked if not name.startswith("0x")]

order = []
seen = set()
for path in sys.argv[2:4]:
    for name in functions(path):
        if name not in seen:
            seen.add(name)
            order.append(name)
# Functions only the native run reached, after callgrind's.
for name in open(sys.argv[1]).read().split():
    if name not in seen and not name.startswith("0x") and name != "[unknown]":
        seen.add(name)
        order.append(name)
# Then the rest of what `signet run` (server and agent) ran.
for name in functions(sys.argv[4]):
    if name not in seen:
        seen.add(name)
        order.append(name)
print("\n".join(order))
EOF
echo "build/symbol-order.txt: $(wc -l <build/symbol-order.txt) functions"
