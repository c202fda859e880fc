# Connection-level allow-list: who may connect, by the caller's trust domain
# and a glob over its SPIFFE ID path. Entrypoint: signet/authz/allow.
#
# Callers are indexed by trust domain, so a decision looks up the caller's
# domain once and matches only that domain's patterns.
package signet.authz

import rego.v1

default allow := false

# Trust domain -> glob patterns over the SPIFFE ID path ("/" separates
# segments: "*" is one segment, "**" any number).
allowed_callers := {
	"example.org": ["/ns/web/**", "/ns/ops/sa/admin"],
	"partner.example": ["/billing/*"],
}

allow if {
	some pattern in allowed_callers[input.spiffe.peer_trust_domain]
	glob.match(pattern, ["/"], input.spiffe.peer_path)
}
