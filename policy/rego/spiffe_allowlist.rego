# Connection-level allow-list: who may connect, by the caller's trust domain
# and a glob over its SPIFFE ID path. Entrypoint: signet/authz/allow.
package signet.authz

import rego.v1

default allow := false

allowed_callers := [
	{"trust_domain": "example.org", "path": "/ns/web/**"},
	{"trust_domain": "example.org", "path": "/ns/ops/sa/admin"},
	{"trust_domain": "partner.example", "path": "/billing/*"},
]

allow if {
	some rule in allowed_callers
	input.spiffe.peer_trust_domain == rule.trust_domain
	glob.match(rule.path, ["/"], input.spiffe.peer_path)
}
