//! Envoy SDS (`envoy.service.secret.v3`) over the agent's SVID and bundle state. Arrives with the SDS issue.
