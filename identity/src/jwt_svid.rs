//! JWT-SVIDs (SPIFFE JWT-SVID spec): a compact JWS whose `sub` is a SPIFFE
//! ID, verified against the `jwt-svid` keys of the subject's trust domain.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::bundle::BundleSource;
use crate::spiffe_id::{IdError, SpiffeId};

/// Signature algorithms the JWT-SVID spec allows and we can verify.
pub const ALLOWED_ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Why a token is not a valid JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtSvidError {
    #[error("token is not a compact JWS (header.payload.signature): {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is not allowed for JWT-SVIDs")]
    Algorithm(String),
    #[error("token header has no \"kid\"")]
    NoKid,
    #[error("claim \"sub\" is missing")]
    NoSubject,
    #[error("claim \"sub\" is not a workload SPIFFE ID: {0}")]
    Subject(#[source] IdError),
    #[error("no trust bundle for trust domain {0}")]
    NoBundle(String),
    #[error("no key with kid {kid:?} in the bundle of {trust_domain}")]
    UnknownKid { kid: String, trust_domain: String },
    #[error("signature does not verify: {0}")]
    Signature(String),
    #[error("claim \"aud\" is missing or empty")]
    NoAudience,
    #[error("audience {expected:?} is not among the token's audiences {actual:?}")]
    AudienceMismatch {
        expected: String,
        actual: Vec<String>,
    },
    #[error("claim \"exp\" is missing")]
    NoExpiry,
    #[error("token expired at {exp} (unix seconds)")]
    Expired { exp: u64 },
}

/// A JWT-SVID token and its claims. The token is a bearer credential: it is
/// zeroized on drop and `Debug` does not print it.
#[derive(Clone, PartialEq)]
pub struct JwtSvid {
    token: Zeroizing<String>,
    spiffe_id: SpiffeId,
    audience: Vec<String>,
    expiry: u64,
    issued_at: Option<u64>,
    claims: serde_json::Map<String, Value>,
}

impl JwtSvid {
    /// Reads a token's claims WITHOUT verifying its signature: for a
    /// workload looking at a token it was just handed by its own agent.
    pub fn parse_insecure(token: &str) -> Result<Self, JwtSvidError> {
        let (_, claims) = split(token)?;
        Self::from_claims(token, claims)
    }

    /// Verifies `token` against the bundles at time `now`, requiring
    /// `audience` to be among its audiences.
    pub fn verify(
        token: &str,
        bundles: &impl BundleSource,
        audience: &str,
        now: SystemTime,
    ) -> Result<Self, JwtSvidError> {
        let (header, claims) = split(token)?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let alg = ALLOWED_ALGORITHMS
            .into_iter()
            .find(|a| format!("{a:?}") == alg_name)
            .ok_or_else(|| JwtSvidError::Algorithm(alg_name.to_owned()))?;
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or(JwtSvidError::NoKid)?;
        let svid = Self::from_claims(token, claims)?;
        let td = svid.spiffe_id.trust_domain_str();
        let bundle = bundles
            .bundle_for(td)
            .ok_or_else(|| JwtSvidError::NoBundle(td.to_owned()))?;
        let authority = bundle
            .jwt_authority(kid)
            .ok_or_else(|| JwtSvidError::UnknownKid {
                kid: kid.to_owned(),
                trust_domain: td.to_owned(),
            })?;
        let key = DecodingKey::from_jwk(authority.jwk())
            .map_err(|e| JwtSvidError::Signature(format!("bundle key {kid:?}: {e}")))?;
        // Signature only: claims are checked below against the given clock.
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| JwtSvidError::Signature(e.to_string()))?;
        if !svid.audience.iter().any(|a| a == audience) {
            return Err(JwtSvidError::AudienceMismatch {
                expected: audience.to_owned(),
                actual: svid.audience.clone(),
            });
        }
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if svid.expiry <= now_secs {
            return Err(JwtSvidError::Expired { exp: svid.expiry });
        }
        Ok(svid)
    }

    fn from_claims(
        token: &str,
        claims: serde_json::Map<String, Value>,
    ) -> Result<Self, JwtSvidError> {
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or(JwtSvidError::NoSubject)?;
        let spiffe_id = SpiffeId::parse_workload(sub).map_err(JwtSvidError::Subject)?;
        let audience: Vec<String> = match claims.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        if audience.is_empty() {
            return Err(JwtSvidError::NoAudience);
        }
        let expiry = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(JwtSvidError::NoExpiry)?;
        let issued_at = claims.get("iat").and_then(Value::as_u64);
        Ok(Self {
            token: Zeroizing::new(token.to_owned()),
            spiffe_id,
            audience,
            expiry,
            issued_at,
            claims,
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    pub fn audience(&self) -> &[String] {
        &self.audience
    }

    /// `exp`, unix seconds.
    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    /// `iat`, unix seconds, when present.
    pub fn issued_at(&self) -> Option<u64> {
        self.issued_at
    }

    /// All claims, for ValidateJWTSVID responses.
    pub fn claims(&self) -> &serde_json::Map<String, Value> {
        &self.claims
    }
}

impl fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("audience", &self.audience)
            .field("expiry", &self.expiry)
            .field("token", &"[redacted]")
            .finish()
    }
}

type JsonObject = serde_json::Map<String, Value>;

/// Splits a compact JWS and decodes its header and claims.
/// The key id (`kid` header) a token names, read WITHOUT verifying it.
pub fn key_id_insecure(token: &str) -> Option<String> {
    let (header, _) = split(token).ok()?;
    header.get("kid")?.as_str().map(str::to_owned)
}

fn split(token: &str) -> Result<(JsonObject, JsonObject), JwtSvidError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtSvidError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let decode = |part: &str, what: &str| -> Result<JsonObject, JwtSvidError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| JwtSvidError::Malformed(format!("{what} is not base64url: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| JwtSvidError::Malformed(format!("{what} is not a JSON object: {e}")))
    };
    Ok((decode(h, "header")?, decode(c, "payload")?))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::{EncodingKey, Header};
    use rcgen::{KeyPair, PublicKeyData};
    use serde_json::json;

    use super::*;
    use crate::bundle::{Bundle, JwtAuthority};
    use crate::spiffe_id::TrustDomain;

    struct Signer {
        key: KeyPair,
        kid: String,
        alg: Algorithm,
    }

    impl Signer {
        fn new(alg: Algorithm) -> Self {
            let rc_alg = match alg {
                Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
                Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
                _ => &rcgen::PKCS_RSA_SHA256,
            };
            Self {
                key: KeyPair::generate_for(rc_alg).unwrap(),
                kid: "kid-1".into(),
                alg,
            }
        }

        fn sign(&self, claims: &Value) -> String {
            let mut header = Header::new(self.alg);
            header.kid = Some(self.kid.clone());
            let pem = self.key.serialize_pem();
            let key = match self.alg {
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
                _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
            }
            .unwrap();
            jsonwebtoken::encode(&header, claims, &key).unwrap()
        }

        fn bundle(&self) -> Bundle {
            let mut b = Bundle::new(TrustDomain::parse("example.org").unwrap());
            b.add_jwt_authority(
                JwtAuthority::from_spki(&self.kid, &self.key.subject_public_key_info()).unwrap(),
            );
            b
        }
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    fn exp_in(secs: u64) -> u64 {
        (now() + Duration::from_secs(secs))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims() -> Value {
        json!({"sub": "spiffe://example.org/web", "aud": ["db", "cache"], "exp": exp_in(300), "iat": exp_in(0)})
    }

    #[test]
    fn valid_tokens_verify_for_every_supported_key_type() {
        for alg in [
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::RS256,
            Algorithm::PS256,
        ] {
            let s = Signer::new(alg);
            let token = s.sign(&claims());
            let svid = JwtSvid::verify(&token, &s.bundle(), "cache", now())
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/web");
            assert_eq!(svid.audience(), ["db", "cache"]);
            assert!(!format!("{svid:?}").contains(&token));
        }
    }

    #[test]
    fn a_single_string_audience_is_accepted() {
        let s = Signer::new(Algorithm::ES256);
        let mut c = claims();
        c["aud"] = "db".into();
        JwtSvid::verify(&s.sign(&c), &s.bundle(), "db", now()).unwrap();
    }

    #[test]
    fn each_claim_rule_has_its_own_error() {
        let s = Signer::new(Algorithm::ES256);
        let b = s.bundle();
        let check = |c: Value, aud: &str| JwtSvid::verify(&s.sign(&c), &b, aud, now());

        assert!(matches!(
            check(claims(), "other"),
            Err(JwtSvidError::AudienceMismatch { .. })
        ));
        let mut c = claims();
        c["aud"] = json!([]);
        assert_eq!(check(c, "db"), Err(JwtSvidError::NoAudience));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(check(c, "db"), Err(JwtSvidError::NoExpiry));
        let mut c = claims();
        c["exp"] = exp_in(0).saturating_sub(10).into();
        assert!(matches!(check(c, "db"), Err(JwtSvidError::Expired { .. })));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(check(c, "db"), Err(JwtSvidError::NoSubject));
        let mut c = claims();
        c["sub"] = "spiffe://example.org".into();
        assert!(matches!(
            check(c, "db"),
            Err(JwtSvidError::Subject(IdError::MissingPath(_)))
        ));
        let mut c = claims();
        c["sub"] = "spiffe://other.org/web".into();
        assert_eq!(
            check(c, "db"),
            Err(JwtSvidError::NoBundle("other.org".into()))
        );
    }

    #[test]
    fn expiry_follows_the_given_clock() {
        let s = Signer::new(Algorithm::ES256);
        let token = s.sign(&claims());
        let later = now() + Duration::from_secs(301);
        assert!(matches!(
            JwtSvid::verify(&token, &s.bundle(), "db", later),
            Err(JwtSvidError::Expired { .. })
        ));
    }

    #[test]
    fn wrong_key_and_tampering_are_refused() {
        let s = Signer::new(Algorithm::ES256);
        let token = s.sign(&claims());
        // Same kid, different key.
        let impostor = Signer::new(Algorithm::ES256);
        assert!(matches!(
            JwtSvid::verify(&token, &impostor.bundle(), "db", now()),
            Err(JwtSvidError::Signature(_))
        ));
        // Unknown kid.
        let mut other_kid = Signer::new(Algorithm::ES256);
        other_kid.kid = "kid-2".into();
        assert!(matches!(
            JwtSvid::verify(&token, &other_kid.bundle(), "db", now()),
            Err(JwtSvidError::UnknownKid { .. })
        ));
        // Payload swapped for another subject, signature kept.
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims();
        c["sub"] = "spiffe://example.org/admin".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(c.to_string()),
            parts[2]
        );
        assert!(matches!(
            JwtSvid::verify(&forged, &s.bundle(), "db", now()),
            Err(JwtSvidError::Signature(_))
        ));
    }

    #[test]
    fn header_rules() {
        let s = Signer::new(Algorithm::ES256);
        let b = s.bundle();
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        for (header, want) in [
            (
                json!({"alg": "none", "kid": "kid-1"}),
                JwtSvidError::Algorithm("none".into()),
            ),
            (
                json!({"alg": "HS256", "kid": "kid-1"}),
                JwtSvidError::Algorithm("HS256".into()),
            ),
            (json!({"alg": "ES256"}), JwtSvidError::NoKid),
        ] {
            let token = format!("{}.{body}.c2ln", URL_SAFE_NO_PAD.encode(header.to_string()));
            assert_eq!(JwtSvid::verify(&token, &b, "db", now()), Err(want));
        }
        assert!(matches!(
            JwtSvid::verify("a.b", &b, "db", now()),
            Err(JwtSvidError::Malformed(_))
        ));
        assert!(matches!(
            JwtSvid::verify("!.!.!", &b, "db", now()),
            Err(JwtSvidError::Malformed(_))
        ));
    }

    #[test]
    fn parse_insecure_reads_claims() {
        let s = Signer::new(Algorithm::ES256);
        let svid = JwtSvid::parse_insecure(&s.sign(&claims())).unwrap();
        assert_eq!(svid.spiffe_id().as_str(), "spiffe://example.org/web");
        assert!(svid.issued_at().is_some());
    }
}
