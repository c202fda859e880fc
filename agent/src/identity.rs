//! The agent's own identity: attesting to a server (join token, x509pop,
//! or the insecure bootstrap), and keeping the SVID, key and bundle in the
//! data dir so a restart resumes without attesting again.

use std::path::PathBuf;
use std::time::SystemTime;

use signet_identity::{Bundle, X509Svid};
use signet_workload::atomic_file;

use crate::node_client::{AttestWith, ClientError, NodeClient};
use crate::{AgentConfig, AgentError, NodeAttestation};

/// The agent's own identity.
pub(super) struct Identity {
    pub(super) svid: X509Svid,
    pub(super) bundle: Bundle,
    pub(super) can_reattest: bool,
}

pub(super) fn svid_expired(svid: &X509Svid) -> bool {
    svid.not_after() <= SystemTime::now()
}

pub(super) async fn attest(config: &AgentConfig) -> Result<Identity, AgentError> {
    let mut last = None;
    for addr in crate::server_address::resolve_all(&config.servers, crate::random_u64()).await {
        let connected = match &config.bootstrap_bundle {
            Some(b) => NodeClient::connect(addr, b.clone(), None).await,
            None => NodeClient::connect_insecure(addr).await,
        };
        let mut client = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(server = %addr, error = %e, "cannot reach the server to attest");
                last = Some(e);
                continue;
            }
        };
        let result = match &config.attestation {
            NodeAttestation::JoinToken(t) => client.attest(AttestWith::JoinToken(t)).await,
            NodeAttestation::X509Pop { cert, key } => {
                let read = |p: &PathBuf| {
                    std::fs::read(p).map_err(|e| AgentError::State {
                        path: p.clone(),
                        reason: e.to_string(),
                    })
                };
                let chain = signet_identity::bundle::certificates_from_pem(&read(cert)?)
                    .map_err(|e| AgentError::State {
                        path: cert.clone(),
                        reason: e.to_string(),
                    })?
                    .into_iter()
                    .map(|c| c.to_vec())
                    .collect();
                let key_pem = String::from_utf8(read(key)?).map_err(|e| AgentError::State {
                    path: key.clone(),
                    reason: e.to_string(),
                })?;
                let key_pair =
                    rcgen::KeyPair::from_pem(&key_pem).map_err(|e| AgentError::State {
                        path: key.clone(),
                        reason: e.to_string(),
                    })?;
                client
                    .attest(AttestWith::X509Pop {
                        chain,
                        key: &key_pair,
                    })
                    .await
            }
            NodeAttestation::Preissued => {
                return Err(AgentError::Refused(
                    "a preissued agent cannot attest on its own".into(),
                ));
            }
        };
        match result {
            Ok(a) => {
                tracing::info!(agent_id = %a.svid.spiffe_id(), "node attested");
                return Ok(Identity {
                    svid: a.svid,
                    bundle: a.bundle,
                    can_reattest: a.can_reattest,
                });
            }
            Err(ClientError::Status(s)) if s.code() == tonic::Code::PermissionDenied => {
                return Err(AgentError::Refused(s.message().to_owned()));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map(AgentError::from).unwrap_or(AgentError::NoServer))
}

pub(super) fn state_paths(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    (
        dir.join("agent_svid.pem"),
        dir.join("agent_svid_key.pem"),
        dir.join("bundle.json"),
        dir.join("agent_state.json"),
    )
}

pub(super) fn load_identity(config: &AgentConfig) -> Result<Option<Identity>, AgentError> {
    let Some(dir) = &config.data_dir else {
        return Ok(None);
    };
    let (svid_path, key_path, bundle_path, state_path) = state_paths(dir);
    if !svid_path.exists() {
        return Ok(None);
    }
    let err = |p: &PathBuf, reason: String| AgentError::State {
        path: p.clone(),
        reason,
    };
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| err(p, e.to_string()));
    let svid = X509Svid::from_pem(&read(&svid_path)?, &read(&key_path)?)
        .map_err(|e| err(&svid_path, e.to_string()))?;
    let td = svid.spiffe_id().trust_domain();
    let bundle = Bundle::parse_json(td, &read(&bundle_path)?)
        .map_err(|e| err(&bundle_path, e.to_string()))?;
    let can_reattest = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["can_reattest"].as_bool())
        .unwrap_or(false);
    if svid_expired(&svid) {
        tracing::warn!(agent_id = %svid.spiffe_id(), "the stored agent SVID expired; attesting again");
        return Ok(None);
    }
    tracing::info!(agent_id = %svid.spiffe_id(), "resuming with the stored agent SVID (no re-attestation)");
    Ok(Some(Identity {
        svid,
        bundle,
        can_reattest,
    }))
}

pub(super) fn persist_identity(config: &AgentConfig, id: &Identity) -> Result<(), AgentError> {
    let Some(dir) = &config.data_dir else {
        return Ok(());
    };
    let (svid_path, key_path, bundle_path, state_path) = state_paths(dir);
    let write = |p: &PathBuf, data: &[u8], mode: u32| {
        atomic_file::write(p, data, mode).map_err(|e| AgentError::State {
            path: p.clone(),
            reason: e.to_string(),
        })
    };
    std::fs::create_dir_all(dir).map_err(|e| AgentError::State {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    write(
        &key_path,
        id.svid.private_key().to_pem().as_bytes(),
        atomic_file::SECRET_MODE,
    )?;
    write(&svid_path, id.svid.chain_pem().as_bytes(), 0o644)?;
    let json = id.bundle.to_json().map_err(|e| AgentError::State {
        path: bundle_path.clone(),
        reason: e.to_string(),
    })?;
    write(&bundle_path, json.as_bytes(), 0o644)?;
    write(
        &state_path,
        serde_json::json!({ "can_reattest": id.can_reattest })
            .to_string()
            .as_bytes(),
        0o644,
    )
}
