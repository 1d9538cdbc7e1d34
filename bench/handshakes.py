"""Full TLS handshakes in a loop, one connection at a time, for a fixed time.

    python -m bench.handshakes ADDRESS PORT SERVER_NAME SECONDS

Prints the number of handshakes completed. Each is a new TCP connection and a new TLS
session (no resumption: no session is offered), closed with a reset once the handshake is
done so that neither side keeps the connection (or a TIME_WAIT port). The certificate is
not verified: that is the client's cost, the same against every server, and not what is
measured. Several of these processes make the concurrent load.
"""

from __future__ import annotations

import socket
import ssl
import struct
import sys
import time


def main(argv: list[str] | None = None) -> int:
    address, port, server_name, seconds = (argv or sys.argv[1:])[:4]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + float(seconds)
    done = failed = 0
    linger = struct.pack("ii", 1, 0)
    while time.monotonic() < deadline:
        sock = socket.create_connection((address, int(port)), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        try:
            with context.wrap_socket(sock, server_hostname=server_name):
                done += 1
        except (OSError, ssl.SSLError):
            failed += 1
        finally:
            sock.close()
    print(done, failed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
