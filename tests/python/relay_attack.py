"""An attacker's connection to the agent socket, handed to a child that
relays it on a local socket. Run by tests/attestation_attacks.rs.

usage: relay_attack.py AGENT_SOCKET RELAY_SOCKET exec ENTITLED_BINARY
       relay_attack.py AGENT_SOCKET RELAY_SOCKET exec-on-input ENTITLED_BINARY
       relay_attack.py AGENT_SOCKET RELAY_SOCKET exit-on-input

The process connects (so the agent's SO_PEERCRED names its pid), forks a
child that keeps the connection and relays it on RELAY_SOCKET, prints
"relaying PID", then either execs ENTITLED_BINARY (same pid, same start
time, another executable) or exits (so its pid can be reused by a victim);
in the -on-input modes only after a line arrives on stdin.
"""

import os
import socket
import sys
import threading


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main():
    agent, relay, mode = sys.argv[1:4]
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(agent)
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:
        os.close(ready_r)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(relay)
        listener.listen(1)
        os.write(ready_w, b"x")
        os.close(ready_w)
        client, _ = listener.accept()
        back = threading.Thread(target=pump, args=(client, conn), daemon=True)
        back.start()
        pump(conn, client)
        back.join(timeout=5)
        os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)
    conn.close()  # the child's copy keeps the connection open
    print(f"relaying {os.getpid()}", flush=True)
    if mode.endswith("-on-input"):
        sys.stdin.readline()  # the agent has accepted, or a stream is open
    if mode.startswith("exec"):
        entitled = sys.argv[4]
        os.execv(entitled, [entitled, "60"])
    os._exit(0)


if __name__ == "__main__":
    main()
