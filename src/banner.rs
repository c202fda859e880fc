//! What `signet server` and `signet run` print once they serve: where
//! everything is, and what to try next.

use std::path::Path;

use signet_server::Running;
use signet_server::datastore::redact_url;
use signet_server::federation::EndpointProfile;
use signet_server::oidc::{DISCOVERY_PATH, OidcTransport};
use signet_workload::SocketRole;

use crate::sockets::flag_to_reach;

pub fn print_banner(
    running: &Running,
    data_dir: &Path,
    datastore: &str,
    agent_socket: Option<&Path>,
    lines: &[String],
) {
    let server = &running.server;
    let admin_socket = &running.admin_socket;
    let node_addr = running.node_addr;
    let ca = server.ca();
    let authority = ca.x509_authority();
    let until = humantime::format_rfc3339_seconds(authority.not_after());
    let bundle = ca.bundle();
    let sock = admin_socket.display();
    let socket_flag = flag_to_reach(SocketRole::Admin, admin_socket);
    let cfg = server.config();
    let td = server.trust_domain();
    println!(
        "signet {} is running",
        if agent_socket.is_some() {
            "(combined server and agent)"
        } else {
            "server"
        }
    );
    println!("  trust domain   {td}");
    let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    println!("  data dir       {}", data_dir.display());
    println!("  datastore      {}", redact_url(datastore));
    println!("  admin socket   {sock} (mode 0600)");
    println!("  agent API      {node_addr} (mTLS)");
    if let Some(addr) = running.admin_listen_addr {
        println!("  admin API      {addr} (mTLS, for entries with the admin flag; --server-url)");
    }
    if let (Some(addr), Some(profile)) = (running.federation_addr, &running.federation_profile) {
        let presents = match profile {
            EndpointProfile::HttpsSpiffe => format!("presents {td}'s server SVID"),
            EndpointProfile::HttpsWeb { cert, .. } => format!("presents {}", cert.display()),
        };
        println!(
            "  bundle endpoint https://{addr} (SPIFFE federation, {}: {presents})",
            profile.name()
        );
    }
    if let Some(oidc) = &running.oidc {
        let scheme = match oidc.transport {
            OidcTransport::Http => "http",
            _ => "https",
        };
        let how = match (&oidc.transport, &oidc.ca_file) {
            (OidcTransport::Http, _) => "plain HTTP for a proxy in front".to_owned(),
            (_, Some(ca)) => format!("self-signed: trust {}", ca.display()),
            (OidcTransport::Https { cert, .. }, None) => format!("presents {}", cert.display()),
            _ => String::new(),
        };
        println!(
            "  OIDC discovery {scheme}://{}{DISCOVERY_PATH} ({how}; issuer {})",
            oidc.addr, oidc.issuer
        );
    }
    if let Some(agent) = agent_socket {
        println!(
            "  agent socket   {} (Workload API; SPIFFE_ENDPOINT_SOCKET=unix://{})",
            agent.display(),
            agent.display()
        );
    }
    for line in lines {
        println!("{line}");
    }
    println!(
        "  CA             {}: {} key, active until {until}; bundle sequence {}",
        if server.resumed_ca() {
            "resumed from the datastore"
        } else {
            "new CA created (a new trust bundle: agents and peers of an earlier one will not trust it)"
        },
        cfg.ca.key_type,
        bundle.sequence()
    );
    println!(
        "  SVID TTLs      X509 {}, JWT {}",
        humantime::format_duration(cfg.ca.x509_svid_ttl),
        humantime::format_duration(cfg.ca.jwt_svid_ttl)
    );
    if let Some(parent) = &cfg.default_parent_id {
        println!("  local agent    {parent} (entries without --parent-id go here)");
    }
    println!();
    println!("Try:");
    println!(
        "  signet entry create{socket_flag} --spiffe-id spiffe://{td}/web --selector unix:uid:$(id -u)"
    );
    if let Some(agent) = agent_socket {
        let api_flag = flag_to_reach(SocketRole::Agent, agent);
        println!("  signet api fetch x509{api_flag}");
        println!("  signet api fetch jwt{api_flag} --audience db");
    }
    println!("  signet entry show{socket_flag}");
    println!("  signet bundle show{socket_flag}");
    if let Some(addr) = running.federation_addr {
        println!("  curl -sk https://{addr}/    # the bundle, as federated servers fetch it");
    }
    if let Some(oidc) = &running.oidc {
        let trust = match &oidc.ca_file {
            Some(ca) => format!("--cacert {} ", ca.display()),
            None => String::new(),
        };
        println!(
            "  curl -s {trust}{}{DISCOVERY_PATH}    # what OIDC relying parties read",
            oidc.issuer
        );
    }
    println!("  signet token generate{socket_flag}");
    println!();
    println!(
        "The whole mission in one command: signet demo (sidecars, policy, mTLS). Envoy: examples/envoy."
    );
    println!("Press Ctrl-C to stop.");
}
