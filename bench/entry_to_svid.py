#!/usr/bin/env python3
"""Entry -> SVID on an open Workload API stream of `signet run`, timed by an
independent client (gRPC C-core through Python grpcio).

usage: bench/entry_to_svid.py [SIGNET_BINARY] [ROUNDS]
    (default: target/release/signet, 100 rounds)

Starts `signet run` in a temp dir, opens FetchX509SVID as this user, then
ROUNDS times: creates an entry for this uid with `signet entry create` and
waits until the stream carries its SVID; deletes it and waits until the
stream drops it. Prints p50/p99/max of: the whole (entry create invoked ->
SVID on the stream), the admin command alone (process start, admin call,
exit), and the rest (command returned -> SVID on the stream).
"""

import os
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc

HEADER = (("workload.spiffe.io", "true"),)


def pct(values, p):
    s = sorted(values)
    return s[round((len(s) - 1) * p)]


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/signet"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    d = tempfile.mkdtemp(prefix="signet-lat")
    admin, agent = os.path.join(d, "admin.sock"), os.path.join(d, "agent.sock")
    server = subprocess.Popen(
        [binary, "--log", "warn", "run", "--data-dir", os.path.join(d, "data"),
         "--admin-socket", admin, "--agent-socket", agent, "--bind-address", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in server.stdout:
            if "Press Ctrl-C" in line:
                break
        uid = os.getuid()

        def signet(*args):
            out = subprocess.run([binary, *args, "--socket", admin], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            return out.stdout

        signet("entry", "create", "--spiffe-id", "spiffe://example.org/base",
               "--selector", f"unix:uid:{uid}")
        ids = set()
        changed = threading.Condition()

        def follow():
            # Until the base entry's SVID exists the agent answers "no
            # identity issued"; retry as SPIFFE clients do.
            with grpc.insecure_channel("unix:" + agent) as ch:
                stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch)
                while True:
                    try:
                        for resp in stub.FetchX509SVID(workload_pb2.X509SVIDRequest(),
                                                       metadata=HEADER):
                            now = time.perf_counter()
                            with changed:
                                ids.clear()
                                ids.update((s.spiffe_id, now) for s in resp.svids)
                                changed.notify_all()
                    except grpc.RpcError as e:
                        if e.code() != grpc.StatusCode.PERMISSION_DENIED:
                            return  # signet stopped at the end
                        time.sleep(0.05)

        threading.Thread(target=follow, daemon=True).start()

        def wait_for(pred):
            with changed:
                while True:
                    hit = pred()
                    if hit is not None:
                        return hit
                    if not changed.wait(timeout=10):
                        raise SystemExit("timed out waiting for the stream")

        wait_for(lambda: True if any(i == "spiffe://example.org/base" for i, _ in ids) else None)
        whole, command, rest = [], [], []
        for n in range(rounds):
            sid = f"spiffe://example.org/lat/{n}"
            t0 = time.perf_counter()
            out = signet("entry", "create", "--spiffe-id", sid, "--selector", f"unix:uid:{uid}",
                         "--output", "json")
            t1 = time.perf_counter()
            seen = wait_for(lambda: next((t for i, t in ids if i == sid), None))
            whole.append(seen - t0)
            command.append(t1 - t0)
            rest.append(seen - t1)
            entry_id = __import__("json").loads(out)["id"]
            signet("entry", "delete", "--id", entry_id)
            wait_for(lambda: True if all(i != sid for i, _ in ids) else None)
        for name, v in (("entry create -> SVID on the stream", whole),
                        ("  the admin command (start, call, exit)", command),
                        ("  command returned -> SVID on the stream", rest)):
            print(f"{name}: p50 {pct(v, .5)*1e3:.1f} ms, p99 {pct(v, .99)*1e3:.1f} ms, "
                  f"max {max(v)*1e3:.1f} ms ({len(v)} rounds)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
