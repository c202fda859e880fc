"""Opens many idle connections to a Unix socket and holds them, as a local
user trying to exhaust a server's file descriptors would. Run by
tests/attestation_attacks.rs.

usage: hold_connections.py SOCKET COUNT

Prints "holding N" once N connections are open, then holds them until
killed.
"""

import resource
import socket
import sys
import time


def main():
    path, count = sys.argv[1], int(sys.argv[2])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        try:
            s.connect(path)
        except OSError:
            s.close()
            continue
        held.append(s)
    print(f"holding {len(held)}", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
