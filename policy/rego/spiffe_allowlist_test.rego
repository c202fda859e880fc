package signet.authz

import rego.v1

peer(id, td, path) := {"spiffe": {"peer_id": id, "peer_trust_domain": td, "peer_path": path}}

test_web_workload_allowed if {
	allow with input as peer("spiffe://example.org/ns/web/sa/frontend", "example.org", "/ns/web/sa/frontend")
}

test_admin_allowed if {
	allow with input as peer("spiffe://example.org/ns/ops/sa/admin", "example.org", "/ns/ops/sa/admin")
}

test_partner_billing_allowed if {
	allow with input as peer("spiffe://partner.example/billing/invoices", "partner.example", "/billing/invoices")
}

test_partner_nested_path_denied if {
	not allow with input as peer("spiffe://partner.example/billing/a/b", "partner.example", "/billing/a/b")
}

test_other_trust_domain_denied if {
	not allow with input as peer("spiffe://evil.example/ns/web/sa/frontend", "evil.example", "/ns/web/sa/frontend")
}

test_no_peer_denied if {
	not allow with input as {}
}

test_pattern_of_another_domain_denied if {
	# /billing/* is allowed for partner.example only.
	not allow with input as peer("spiffe://example.org/billing/invoices", "example.org", "/billing/invoices")
}
