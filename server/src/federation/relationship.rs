//! A federation relationship: another trust domain whose bundle this server
//! fetches from that trust domain's SPIFFE bundle endpoint, and how the
//! endpoint is authenticated (the profile of the SPIFFE Federation
//! specification it serves).

use serde::{Deserialize, Serialize};
use signet_identity::{SpiffeId, TrustDomain};

/// How a foreign bundle endpoint is authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "profile")]
pub enum EndpointAuth {
    /// The endpoint presents an X509-SVID for `endpoint_spiffe_id`, which
    /// must chain to the foreign trust domain's bundle this server holds
    /// (bootstrapped once; each fetched bundle authenticates the next).
    #[serde(rename = "https_spiffe")]
    HttpsSpiffe { endpoint_spiffe_id: String },
    /// The endpoint presents a web certificate for the URL's host, chaining
    /// to `ca_pem` (PEM roots), or to the Mozilla roots when none.
    #[serde(rename = "https_web")]
    HttpsWeb {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_pem: Option<String>,
    },
}

impl EndpointAuth {
    /// The profile's name in the SPIFFE Federation specification.
    pub fn profile(&self) -> &'static str {
        match self {
            EndpointAuth::HttpsSpiffe { .. } => "https_spiffe",
            EndpointAuth::HttpsWeb { .. } => "https_web",
        }
    }
}

/// A relationship with another trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relationship {
    pub trust_domain: String,
    /// `https://...`: where that trust domain serves its bundle.
    pub bundle_endpoint_url: String,
    #[serde(flatten)]
    pub auth: EndpointAuth,
}

/// Why a relationship is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelationshipError {
    #[error("trust domain {0:?}: {1}")]
    TrustDomain(String, String),
    #[error("{0} is this server's own trust domain: a server does not federate with itself")]
    Own(String),
    #[error("bundle endpoint URL {0:?}: {1}")]
    Url(String, String),
    #[error("endpoint SPIFFE ID {0:?}: {1}")]
    EndpointId(String, String),
    #[error("endpoint SPIFFE ID {id} is not in the trust domain {td} being federated with")]
    EndpointIdDomain { id: String, td: String },
    #[error("the https_web CA file holds no PEM certificate")]
    NoRoots,
}

impl Relationship {
    /// Checks every field: the trust domain (not `own`), the URL (https,
    /// with a host), the endpoint ID (a SPIFFE ID of that trust domain),
    /// the web roots (PEM certificates). Returns the parsed trust domain.
    pub fn check(&self, own: &TrustDomain) -> Result<TrustDomain, RelationshipError> {
        let td = TrustDomain::parse(&self.trust_domain).map_err(|e| {
            RelationshipError::TrustDomain(self.trust_domain.clone(), e.to_string())
        })?;
        if td == *own {
            return Err(RelationshipError::Own(td.to_string()));
        }
        let bad_url =
            |why: &str| RelationshipError::Url(self.bundle_endpoint_url.clone(), why.into());
        let url =
            url::Url::parse(&self.bundle_endpoint_url).map_err(|e| bad_url(&e.to_string()))?;
        if url.scheme() != "https" {
            return Err(bad_url("must be https://"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad_url("has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad_url("must not carry credentials"));
        }
        match &self.auth {
            EndpointAuth::HttpsSpiffe { endpoint_spiffe_id } => {
                let id = SpiffeId::parse(endpoint_spiffe_id).map_err(|e| {
                    RelationshipError::EndpointId(endpoint_spiffe_id.clone(), e.to_string())
                })?;
                if id.trust_domain() != td {
                    return Err(RelationshipError::EndpointIdDomain {
                        id: id.to_string(),
                        td: td.to_string(),
                    });
                }
            }
            EndpointAuth::HttpsWeb { ca_pem: Some(pem) } => {
                let roots = signet_identity::bundle::certificates_from_pem(pem.as_bytes())
                    .map_err(|_| RelationshipError::NoRoots)?;
                if roots.is_empty() {
                    return Err(RelationshipError::NoRoots);
                }
            }
            EndpointAuth::HttpsWeb { ca_pem: None } => {}
        }
        Ok(td)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spiffe(td: &str, url: &str, id: &str) -> Relationship {
        Relationship {
            trust_domain: td.into(),
            bundle_endpoint_url: url.into(),
            auth: EndpointAuth::HttpsSpiffe {
                endpoint_spiffe_id: id.into(),
            },
        }
    }

    #[test]
    fn every_field_is_checked_and_named() {
        let own = TrustDomain::parse("example.org").unwrap();
        let good = spiffe(
            "partner.test",
            "https://partner.test:8443/",
            "spiffe://partner.test/signet/server",
        );
        assert_eq!(good.check(&own).unwrap().as_str(), "partner.test");
        for (r, want) in [
            (
                spiffe("Partner", "https://x/", "spiffe://partner/x"),
                "trust domain \"Partner\"",
            ),
            (
                spiffe("example.org", "https://x/", "spiffe://example.org/x"),
                "own trust domain",
            ),
            (
                spiffe("partner.test", "http://x/", "spiffe://partner.test/x"),
                "must be https://",
            ),
            (
                spiffe("partner.test", "not a url", "spiffe://partner.test/x"),
                "bundle endpoint URL",
            ),
            (
                spiffe("partner.test", "https://u:p@x/", "spiffe://partner.test/x"),
                "credentials",
            ),
            (
                spiffe("partner.test", "https://x/", "spiffe://other.test/x"),
                "not in the trust domain",
            ),
            (
                spiffe("partner.test", "https://x/", "nope"),
                "endpoint SPIFFE ID \"nope\"",
            ),
        ] {
            let err = r.check(&own).unwrap_err().to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
        let web = Relationship {
            trust_domain: "partner.test".into(),
            bundle_endpoint_url: "https://x/".into(),
            auth: EndpointAuth::HttpsWeb {
                ca_pem: Some("no pem here".into()),
            },
        };
        assert_eq!(web.check(&own), Err(RelationshipError::NoRoots));
    }

    #[test]
    fn stored_as_the_json_of_its_profile() {
        let r = spiffe("partner.test", "https://x/", "spiffe://partner.test/s");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["profile"], "https_spiffe");
        assert_eq!(json["endpoint_spiffe_id"], "spiffe://partner.test/s");
        let back: Relationship = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }
}
