//! The mTLS sidecar for legacy apps (inbound and outbound). Arrives with the sidecar issue.
