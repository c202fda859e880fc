//! Envoy bootstraps built as JSON values (Envoy reads a JSON bootstrap as
//! it reads YAML): inbound with SDS, network RBAC on the peer's SPIFFE ID
//! and tcp_proxy; outbound with tcp_proxy to an mTLS upstream that must
//! present the server's ID. Listeners and the admin endpoint bind port 0:
//! [`super::Envoy`] reads the ports Envoy took.

use serde_json::{Value, json};

/// An SDS secret by name, from the agent's socket (the `signet_agent` cluster).
fn sds(name: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "signet_agent" } }]
            }
        }
    })
}

fn socket_address(port: u16) -> Value {
    json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } })
}

/// The agent's socket, spoken to over HTTP/2.
fn agent_cluster(socket: &str) -> Value {
    json!({
        "name": "signet_agent",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        },
        "load_assignment": {
            "cluster_name": "signet_agent",
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "pipe": { "path": socket } } } }] }]
        }
    })
}

/// A loopback cluster; Envoy's default circuit breaker (1,024 upstream
/// connections) is lifted so it does not cap the connection measures.
fn plain_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "circuit_breakers": { "thresholds": [{
            "max_connections": 1_000_000,
            "max_pending_requests": 1_000_000,
            "max_requests": 1_000_000
        }] },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(port) } }] }]
        }
    })
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat_prefix,
            "cluster": cluster
        }
    })
}

fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>) -> String {
    json!({
        "node": { "id": "signet-test", "cluster": "signet-test" },
        "admin": { "address": socket_address(0) },
        "static_resources": { "listeners": listeners, "clusters": clusters }
    })
    .to_string()
}

/// Envoy inbound: listener `in{i}` for the i-th backend port, mTLS with
/// its SVID `server_id` over SDS from the agent at `socket`, network RBAC
/// allowing `client_id` only, tcp_proxy to the backend.
pub fn inbound(socket: &str, backends: &[u16], server_id: &str, client_id: &str) -> String {
    let mut ls = Vec::new();
    let mut clusters = Vec::new();
    for (i, backend) in backends.iter().enumerate() {
        let backend_name = format!("backend{i}");
        ls.push(json!({
            "name": format!("in{i}"),
            "address": socket_address(0),
            "filter_chains": [{
                "filters": [
                    {
                        "name": "envoy.filters.network.rbac",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                            "stat_prefix": format!("rbac{i}"),
                            "rules": {
                                "action": "ALLOW",
                                "policies": { "callers": {
                                    "permissions": [{ "any": true }],
                                    "principals": [{ "authenticated": { "principal_name": { "exact": client_id } } }]
                                } }
                            }
                        }
                    },
                    tcp_proxy(&format!("in{i}"), &backend_name)
                ],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": true,
                        "common_tls_context": {
                            "tls_certificate_sds_secret_configs": [sds(server_id)],
                            "validation_context_sds_secret_config": sds("ALL")
                        }
                    }
                }
            }]
        }));
        clusters.push(plain_cluster(&backend_name, *backend));
    }
    clusters.push(agent_cluster(socket));
    bootstrap(ls, clusters)
}

/// Envoy outbound: plaintext listener `out{i}` for the i-th upstream port,
/// tcp_proxy to an mTLS upstream that must present `server_id`.
pub fn outbound(socket: &str, upstreams: &[u16], server_id: &str) -> String {
    let mut ls = Vec::new();
    let mut clusters = Vec::new();
    for (i, upstream) in upstreams.iter().enumerate() {
        let upstream_name = format!("upstream{i}");
        ls.push(json!({
            "name": format!("out{i}"),
            "address": socket_address(0),
            "filter_chains": [{ "filters": [tcp_proxy(&format!("out{i}"), &upstream_name)] }]
        }));
        let mut cluster = plain_cluster(&upstream_name, *upstream);
        cluster["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [sds("default")],
                    "combined_validation_context": {
                        "default_validation_context": {
                            "match_typed_subject_alt_names": [{ "san_type": "URI", "matcher": { "exact": server_id } }]
                        },
                        "validation_context_sds_secret_config": sds("spiffe://example.org")
                    }
                }
            }
        });
        clusters.push(cluster);
    }
    clusters.push(agent_cluster(socket));
    bootstrap(ls, clusters)
}

/// A plaintext HTTP listener `name` routing everything to the cluster
/// `backend` through `filters` then the router.
fn http_listener(name: &str, mut filters: Vec<Value>) -> Value {
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    }));
    json!({
        "name": name,
        "address": socket_address(0),
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": { "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "backend" } }]
                }] },
                "http_filters": filters
            }
        }] }]
    })
}

/// Envoy with external authorization: plaintext HTTP listener `authz`,
/// the `ext_authz` filter asking the agent at `socket` (gRPC over its
/// Unix socket, request bodies up to 8 KiB sent along), then the router
/// to the backend; a failed check denies (`failure_mode_allow: false`).
pub fn ext_authz(socket: &str, backend: u16) -> String {
    let filter = json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "failure_mode_allow": false,
            "with_request_body": { "max_request_bytes": 8192, "allow_partial_message": true },
            "grpc_service": {
                "envoy_grpc": { "cluster_name": "signet_agent" },
                "timeout": "1s"
            }
        }
    });
    bootstrap(
        vec![http_listener("authz", vec![filter])],
        vec![plain_cluster("backend", backend), agent_cluster(socket)],
    )
}

/// The same HTTP listener (`http`) with no authorization: the baseline
/// `ext_authz` is measured against.
pub fn http_proxy(backend: u16) -> String {
    bootstrap(
        vec![http_listener("http", Vec::new())],
        vec![plain_cluster("backend", backend)],
    )
}
