package signet.http

import rego.v1

req(peer, method, path) := {
	"spiffe": {"peer_id": peer},
	"attributes": {"request": {"http": {"method": method, "path": path}}},
}

test_frontend_reads_api if {
	allow.allowed with input as req("spiffe://example.org/ns/web/sa/frontend", "GET", "/api/v1/users?page=2")
}

test_frontend_cannot_write if {
	d := allow with input as req("spiffe://example.org/ns/web/sa/frontend", "POST", "/api/v1/users")
	d.allowed == false
	d.http_status == 403
}

test_frontend_cannot_leave_api if {
	not allow.allowed with input as req("spiffe://example.org/ns/web/sa/frontend", "GET", "/admin")
}

test_admin_deletes_anything if {
	allow.allowed with input as req("spiffe://example.org/ns/ops/sa/admin", "DELETE", "/admin/users/7")
}

test_allowed_request_names_caller if {
	d := allow with input as req("spiffe://example.org/ns/web/sa/frontend", "GET", "/api/v1/x")
	d.headers["x-signet-caller"] == "spiffe://example.org/ns/web/sa/frontend"
}
