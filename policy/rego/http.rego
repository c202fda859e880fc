# HTTP mode: method and path by caller identity, answered in the OPA-Envoy
# plugin's object form. Entrypoint: signet/http/allow.
package signet.http

import rego.v1

default allow := {"allowed": false, "http_status": 403, "reason": "no route for caller"}

routes := [
	{"caller": "spiffe://example.org/ns/web/sa/frontend", "methods": ["GET"], "path": "/api/v1/**"},
	{"caller": "spiffe://example.org/ns/ops/sa/admin", "methods": ["GET", "POST", "DELETE"], "path": "/**"},
]

request_path := split(input.attributes.request.http.path, "?")[0]

allow := {"allowed": true, "headers": {"x-signet-caller": input.spiffe.peer_id}} if {
	some r in routes
	input.spiffe.peer_id == r.caller
	input.attributes.request.http.method in r.methods
	glob.match(r.path, ["/"], request_path)
}
