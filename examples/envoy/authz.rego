# Envoy external authorization by Signet, written as for the OPA-Envoy
# plugin (package envoy.authz, rule allow): `signet run --authz-policy
# examples/envoy/authz.rego`, with ext_authz.yaml in front of the app.
#
# - GET: only spiffe://example.org/client, the mTLS caller Envoy verified.
# - POST /orders: the caller must also present a JWT-SVID for the audience
#   "orders" issued to itself, verified with the trust domain's JWT keys,
#   which Signet keeps current in data.signet.jwt_bundles.
package envoy.authz

import rego.v1

# The caller's SPIFFE ID: the URI SAN of its X509-SVID.
caller := input.attributes.source.principal

default allow := {
	"allowed": false,
	"http_status": 403,
	"body": "denied by policy\n",
}

allow := {"allowed": true, "headers": {"x-caller": caller}} if {
	caller == "spiffe://example.org/client"
	input.attributes.request.http.method == "GET"
}

allow := {"allowed": true, "headers": {"x-caller": caller, "x-jwt-subject": claims.sub}} if {
	input.attributes.request.http.method == "POST"
	input.parsed_path == ["orders"]
	claims.sub == caller
}

bearer := t if {
	header := input.attributes.request.http.headers.authorization
	startswith(header, "Bearer ")
	t := trim_prefix(header, "Bearer ")
}

claims := payload if {
	[valid, _, payload] := io.jwt.decode_verify(bearer, {
		"cert": data.signet.jwt_bundles["example.org"],
		"aud": "orders",
	})
	valid
}
