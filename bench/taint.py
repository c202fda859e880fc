#!/usr/bin/env python3
"""Taint -> every open Workload API stream rotated, on `signet run`.

usage (as root): bench/taint.py [SIGNET_BINARY] [STREAMS] [EXTRA]
    (default: target/release/signet, 1000 streams, 0 extra entries)

Starts `signet run` in a temp dir and registers STREAMS entries, one per
uid, plus EXTRA entries for uids that run nothing (SVIDs the agent caches
ahead). Starts STREAMS `signet api watch --output json` processes, each
under its own uid: STREAMS workloads, each with its stream open. Then
prepares and activates a new X.509 authority, taints the old one, and
times, from the moment `signet authority x509 taint` is started, the
arrival on each stream of an SVID signed by the new authority. Prints
p50/p99/max of those times, how long the taint command took, and the
agent's private memory (PSS) before and after.
"""

import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time

FIRST_UID = 50_000


def pct(values, p):
    s = sorted(values)
    return s[round((len(s) - 1) * p)]


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/signet"
    streams = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    extra = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if os.geteuid() != 0:
        raise SystemExit("run as root: each workload runs under a uid of its own")
    d = tempfile.mkdtemp(prefix="signet-taint")
    os.chmod(d, 0o755)
    signet = os.path.join(d, "signet")
    shutil.copy(binary, signet)
    os.chmod(signet, 0o755)
    admin, agent = os.path.join(d, "admin.sock"), os.path.join(d, "agent.sock")
    server = subprocess.Popen(
        [signet, "--log", "warn", "run", "--data-dir", os.path.join(d, "data"),
         "--admin-socket", admin, "--agent-socket", agent, "--bind-address", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=open(os.environ.get("SIGNET_BENCH_LOG", os.devnull), "w"), text=True)
    watchers = []
    try:
        for line in server.stdout:
            if "Press Ctrl-C" in line:
                break

        def cli(*args):
            out = subprocess.run([signet, *args, "--admin-socket", admin, "--output", "json"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"signet {' '.join(args)}: {out.stderr}")
            return json.loads(out.stdout) if out.stdout.strip() else None

        def in_state(listing, state):
            return next(a["authority_id"] for a in listing["authorities"] if a["state"] == state)

        started = time.monotonic()
        for i in range(streams + extra):
            cli("entry", "create", "--spiffe-id", f"spiffe://example.org/w/{i}",
                "--selector", f"unix:uid:{FIRST_UID + i}")
        print(f"{streams + extra} entries registered in {time.monotonic() - started:.1f} s")

        started = time.monotonic()
        sel = selectors.DefaultSelector()
        for i in range(streams):
            uid = FIRST_UID + i
            p = subprocess.Popen([signet, "api", "watch", "--output", "json", "--agent-socket", agent],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 user=uid, group=uid)
            os.set_blocking(p.stdout.fileno(), False)
            watchers.append(p)
            sel.register(p.stdout, selectors.EVENT_READ, i)
        buffers = [b""] * streams
        authority = [None] * streams

        def read_until(done, deadline):
            """Reads stream lines until done() or the deadline; returns when
            each stream last moved to the awaited authority."""
            seen_at = {}
            while not done(seen_at) and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.5):
                    i = key.data
                    chunk = os.read(key.fileobj.fileno(), 65536)
                    if not chunk:
                        raise SystemExit(f"watcher {i} exited")
                    buffers[i] += chunk
                    *lines, buffers[i] = buffers[i].split(b"\n")
                    for line in lines:
                        v = json.loads(line)
                        if "authority_id" in v:
                            authority[i] = v["authority_id"]
                            seen_at[i] = (time.monotonic(), v["authority_id"])
            return seen_at

        read_until(lambda _: all(authority), started + 300)
        if not all(authority):
            raise SystemExit(f"{authority.count(None)} streams got no SVID")
        print(f"{streams} workloads started, each streaming its SVID, in {time.monotonic() - started:.1f} s")
        agent_pid = server.pid
        pss_before = pss_kib(agent_pid)

        old = in_state(cli("authority", "x509", "show"), "active")
        new = in_state(cli("authority", "x509", "prepare"), "prepared")
        cli("authority", "x509", "activate", "--authority-id", new)
        # Drain what the prepare sent (the bundle grew): not part of the measure.
        read_until(lambda _: False, time.monotonic() + 0.5)

        t0 = time.monotonic()
        cli("authority", "x509", "taint", "--authority-id", old)
        command = time.monotonic() - t0
        rotated = {}

        def all_rotated(seen_at):
            for i, (t, a) in seen_at.items():
                if a == new and i not in rotated:
                    rotated[i] = t - t0
            return len(rotated) == streams

        read_until(all_rotated, t0 + 120)
        if len(rotated) < streams:
            raise SystemExit(f"only {len(rotated)} of {streams} streams rotated within 120 s")
        times = list(rotated.values())
        print(f"taint -> SVID of the new authority on each of {streams} streams "
              f"(extra cached entries: {extra}):")
        print(f"  p50 {pct(times, 0.5) * 1000:.0f} ms  p99 {pct(times, 0.99) * 1000:.0f} ms  "
              f"max {max(times) * 1000:.0f} ms  (taint command {command * 1000:.0f} ms)")
        print(f"  signet run PSS: {pss_before / 1024:.1f} MiB before, "
              f"{pss_kib(agent_pid) / 1024:.1f} MiB after")
        cli("authority", "x509", "revoke", "--authority-id", old)
    finally:
        for p in watchers:
            p.terminate()
        for p in watchers:
            p.wait()
        server.terminate()
        server.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
