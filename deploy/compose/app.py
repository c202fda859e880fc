# The legacy HTTP app behind the inbound sidecar. It knows nothing of TLS or
# SPIFFE: it listens on loopback only (the sidecar shares its network
# namespace) and answers every request with the caller identity the sidecar
# passed in x-forwarded-client-cert.
import http.server
import json


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self):
        body = json.dumps({
            "method": self.command,
            "path": self.path,
            "x-forwarded-client-cert": self.headers.get("x-forwarded-client-cert"),
        }).encode() + b"\n"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = answer


http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Handler).serve_forever()
