# Per-port rules: which callers may reach which local port.
# Entrypoint: signet/ports/allow.
package signet.ports

import rego.v1

default allow := false

# Port (as a string) -> SPIFFE IDs allowed; "*" allows any authenticated peer.
port_rules := {
	"5432": ["spiffe://example.org/ns/api/sa/backend"],
	"8443": ["*"],
}

port := sprintf("%d", [input.attributes.destination.address.socketAddress.portValue])

allow if {
	"*" in port_rules[port]
	startswith(input.spiffe.peer_id, "spiffe://")
}

allow if {
	input.spiffe.peer_id in port_rules[port]
}
