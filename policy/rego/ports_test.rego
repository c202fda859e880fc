package signet.ports

import rego.v1

conn(peer, p) := {
	"spiffe": {"peer_id": peer},
	"attributes": {"destination": {"address": {"socketAddress": {"address": "10.0.0.2", "portValue": p}}}},
}

test_backend_reaches_database if {
	allow with input as conn("spiffe://example.org/ns/api/sa/backend", 5432)
}

test_frontend_cannot_reach_database if {
	not allow with input as conn("spiffe://example.org/ns/web/sa/frontend", 5432)
}

test_anyone_reaches_public_port if {
	allow with input as conn("spiffe://partner.example/x", 8443)
}

test_unknown_port_denied if {
	not allow with input as conn("spiffe://example.org/ns/api/sa/backend", 22)
}
