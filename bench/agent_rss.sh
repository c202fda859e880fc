#!/usr/bin/env bash
# Agent memory: a real `signet server` and a real `signet agent` (join
# token) on loopback; N entries parented to the agent (each with its SVID
# minted and cached by the agent); prints the agent's RSS.
#
#   bench/agent_rss.sh [N]      (default 10000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n=${1:-10000}
cargo build --release --quiet
bin=$PWD/target/release/signet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_for() { # file pattern
    for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

"$bin" server --data-dir "$work/server" --admin-socket "$work/admin.sock" --bind-address 127.0.0.1:0 \
    >"$work/server.out" 2>"$work/server.log" &
pids+=($!)
wait_for "$work/server.out" "Press Ctrl-C"
addr=$(awk '/agent API/ {print $3}' "$work/server.out")
"$bin" bundle show --socket "$work/admin.sock" >"$work/bundle.pem"
token=$("$bin" token generate --socket "$work/admin.sock" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$bin" agent --server-address "$addr" --trust-bundle "$work/bundle.pem" --join-token "$token" \
    --data-dir "$work/agent" --socket-path "$work/agent.sock" >"$work/agent.out" 2>"$work/agent.log" &
agent_pid=$!
pids+=($agent_pid)
wait_for "$work/agent.out" "Press Ctrl-C"
rss() { awk '/VmRSS/ {print $2}' "/proc/$agent_pid/status"; }
echo "agent RSS idle (0 entries): $(( $(rss) / 1024 )) MiB"

agent_id=$("$bin" agent list --socket "$work/admin.sock" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["agents"][0]["spiffe_id"])')
python3 - "$n" "$agent_id" >"$work/entries.json" <<'PY'
import json, sys
n, parent = int(sys.argv[1]), sys.argv[2]
print(json.dumps({"entries": [
    {"spiffe_id": f"spiffe://example.org/ns/n{i % 100}/sa/w{i}", "parent_id": parent,
     "selectors": [f"unix:uid:{100000 + i}"]} for i in range(n)]}))
PY
start=$(date +%s.%N)
"$bin" entry create --socket "$work/admin.sock" --data "$work/entries.json" >/dev/null
echo "created $n entries in $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"

# Wait until the agent's memory settles (every SVID minted and cached).
last=0; stable=0
for _ in $(seq 1 600); do
    cur=$(rss)
    if [ "$cur" -eq "$last" ]; then stable=$((stable + 1)); else stable=0; fi
    [ "$stable" -ge 20 ] && break
    last=$cur; sleep 0.25
done
minted=$(python3 -c 'import re,sys; print(sum(int(x) for x in re.findall(r"\"count\":(\d+)", open(sys.argv[1]).read())))' "$work/agent.log")
if grep -q '"level":"\(WARN\|ERROR\)"' "$work/agent.log"; then echo "agent warnings:"; grep '"level":"\(WARN\|ERROR\)"' "$work/agent.log" | head -5; fi
echo "agent RSS with $n authorized entries and $minted SVIDs minted and cached: $(( $(rss) / 1024 )) MiB (peak $(( $(awk '/VmHWM/ {print $2}' /proc/$agent_pid/status) / 1024 )) MiB)"
