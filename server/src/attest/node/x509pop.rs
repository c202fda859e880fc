//! x509pop: the node proves possession of the private key of a certificate
//! that chains to a CA bundle configured on the server. The server checks
//! the chain (rustls-webpki), sends a random nonce, and verifies the node's
//! signature over it (aws-lc-rs) with the certificate's public key.
//!
//! Agent ID: `spiffe://<td>/signet/agent/x509pop/<SHA-1 of the leaf DER>`
//! (SPIRE derives it the same way). Selectors: `x509pop:subject:cn:<cn>`,
//! `x509pop:serialnumber:<hex>`, `x509pop:san:dns:<name>`,
//! `x509pop:san:uri:<uri>`, `x509pop:ca:fingerprint:<SHA-1>` per CA in the
//! verified path.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use rustls_pki_types::{CertificateDer, UnixTime};
use signet_identity::{Selector, TrustDomain};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{AttestError, Attested, Challenger, Evidence, NodeAttestor, agent_id};
use crate::clock::Clock;

use signet_wire::node_api::challenge_message;

pub struct X509PopAttestor {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for X509PopAttestor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509PopAttestor")
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl X509PopAttestor {
    /// `roots`: the CA certificates node certificates must chain to.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            trust_domain,
            roots,
            clock,
        }
    }
}

fn sha1_hex(der: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[async_trait::async_trait]
impl NodeAttestor for X509PopAttestor {
    fn name(&self) -> &'static str {
        "x509pop"
    }

    async fn attest(
        &self,
        evidence: &Evidence,
        challenger: &mut dyn Challenger,
    ) -> Result<Attested, AttestError> {
        let invalid = |m: String| AttestError::InvalidEvidence(m);
        let chain: Vec<CertificateDer<'_>> = evidence
            .x509pop_chain
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let leaf_der = chain
            .first()
            .ok_or_else(|| invalid("a certificate chain is required".into()))?;

        // 1. The chain must lead to a configured CA.
        let anchors = self
            .roots
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .collect::<Vec<_>>();
        let leaf = webpki::EndEntityCert::try_from(leaf_der)
            .map_err(|e| invalid(format!("leaf certificate: {e}")))?;
        let now = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let path = leaf
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &chain[1..],
                UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs())),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| {
                AttestError::Denied(format!(
                    "certificate does not chain to the x509pop CA bundle: {e}"
                ))
            })?;
        let ca_fingerprints: Vec<String> = path
            .intermediate_certificates()
            .map(|c| sha1_hex(&c.der()))
            .chain(std::iter::once(path.anchor()).filter_map(|a| {
                self.roots
                    .iter()
                    .find(|r| {
                        webpki::anchor_from_trusted_cert(r).is_ok_and(|t| t.subject == a.subject)
                    })
                    .map(|r| sha1_hex(r))
            }))
            .collect();

        // 2. The node must hold the leaf's private key.
        let (_, parsed) = X509Certificate::from_der(leaf_der)
            .map_err(|e| invalid(format!("leaf certificate: {e}")))?;
        let spki = parsed.public_key();
        let key_bits: &[u8] = &spki.subject_public_key.data;
        let alg: &'static dyn signature::VerificationAlgorithm = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::EC(p)) if p.data().len() == 65 => {
                &signature::ECDSA_P256_SHA256_ASN1
            }
            Ok(x509_parser::public_key::PublicKey::EC(p)) if p.data().len() == 97 => {
                &signature::ECDSA_P384_SHA384_ASN1
            }
            Ok(x509_parser::public_key::PublicKey::RSA(_)) => {
                &signature::RSA_PKCS1_2048_8192_SHA256
            }
            _ => return Err(invalid("the leaf key is not EC P-256, P-384 or RSA".into())),
        };
        let mut nonce = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| AttestError::Internal("no randomness".into()))?;
        let answer = challenger.challenge(nonce.clone()).await?;
        UnparsedPublicKey::new(alg, key_bits)
            .verify(&challenge_message(&nonce), &answer)
            .map_err(|_| {
                AttestError::Challenge("the signature over the nonce does not verify".into())
            })?;

        // 3. Identity and selectors from the certificate.
        let mut selectors = Vec::new();
        let mut push = |v: String| {
            if let Ok(s) = Selector::new("x509pop", &v) {
                selectors.push(s);
            }
        };
        for cn in parsed
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
        {
            push(format!("subject:cn:{cn}"));
        }
        push(format!(
            "serialnumber:{}",
            parsed
                .tbs_certificate
                .raw_serial_as_string()
                .replace(':', "")
        ));
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => push(format!("san:dns:{d}")),
                    GeneralName::URI(u) => push(format!("san:uri:{u}")),
                    _ => {}
                }
            }
        }
        for fp in ca_fingerprints {
            push(format!("ca:fingerprint:{fp}"));
        }
        selectors.sort();
        selectors.dedup();
        Ok(Attested {
            agent_id: agent_id(&self.trust_domain, "x509pop", &sha1_hex(leaf_der))?,
            selectors,
            can_reattest: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SigningKey,
    };

    use super::*;
    use crate::clock::SystemClock;

    struct Signs<'a>(&'a KeyPair);

    #[async_trait::async_trait]
    impl Challenger for Signs<'_> {
        async fn challenge(&mut self, nonce: Vec<u8>) -> Result<Vec<u8>, AttestError> {
            self.0
                .sign(&challenge_message(&nonce))
                .map_err(|e| AttestError::Challenge(e.to_string()))
        }
    }

    fn ca() -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "node CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = p.self_signed(&key).unwrap().der().clone();
        (cert.clone(), Issuer::from_ca_cert_der(&cert, key).unwrap())
    }

    fn node_cert(issuer: &Issuer<'static, KeyPair>) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["node-1.example.org".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "node-1");
        (p.signed_by(&key, issuer).unwrap().der().to_vec(), key)
    }

    fn attestor(root: CertificateDer<'static>) -> X509PopAttestor {
        X509PopAttestor::new(
            TrustDomain::parse("example.org").unwrap(),
            vec![root],
            Arc::new(SystemClock),
        )
    }

    #[tokio::test]
    async fn a_node_with_its_key_attests_with_selectors() {
        let (root, issuer) = ca();
        let (leaf, key) = node_cert(&issuer);
        let a = attestor(root.clone());
        let ev = Evidence {
            x509pop_chain: vec![leaf.clone()],
            ..Default::default()
        };
        let got = a.attest(&ev, &mut Signs(&key)).await.unwrap();
        assert_eq!(
            got.agent_id.path(),
            format!("/signet/agent/x509pop/{}", sha1_hex(&leaf))
        );
        assert!(got.can_reattest);
        let sels: Vec<String> = got.selectors.iter().map(ToString::to_string).collect();
        assert!(
            sels.contains(&"x509pop:subject:cn:node-1".to_string()),
            "{sels:?}"
        );
        assert!(
            sels.contains(&"x509pop:san:dns:node-1.example.org".to_string()),
            "{sels:?}"
        );
        assert!(
            sels.contains(&format!("x509pop:ca:fingerprint:{}", sha1_hex(&root))),
            "{sels:?}"
        );
        assert!(sels.iter().any(|s| s.starts_with("x509pop:serialnumber:")));
    }

    #[tokio::test]
    async fn without_the_private_key_attestation_fails() {
        let (root, issuer) = ca();
        let (leaf, _key) = node_cert(&issuer);
        let thief = KeyPair::generate().unwrap();
        let ev = Evidence {
            x509pop_chain: vec![leaf],
            ..Default::default()
        };
        let err = attestor(root)
            .attest(&ev, &mut Signs(&thief))
            .await
            .unwrap_err();
        assert!(matches!(err, AttestError::Challenge(_)), "{err}");
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_is_refused() {
        let (root, _) = ca();
        let (_, other_issuer) = ca();
        let (leaf, key) = node_cert(&other_issuer);
        let ev = Evidence {
            x509pop_chain: vec![leaf],
            ..Default::default()
        };
        let err = attestor(root)
            .attest(&ev, &mut Signs(&key))
            .await
            .unwrap_err();
        assert!(matches!(err, AttestError::Denied(_)), "{err}");
    }

    #[tokio::test]
    async fn a_replayed_answer_does_not_verify() {
        // An answer recorded for one nonce is useless for the next.
        struct Replay(Vec<u8>);
        #[async_trait::async_trait]
        impl Challenger for Replay {
            async fn challenge(&mut self, _: Vec<u8>) -> Result<Vec<u8>, AttestError> {
                Ok(self.0.clone())
            }
        }
        let (root, issuer) = ca();
        let (leaf, key) = node_cert(&issuer);
        let recorded = key.sign(&challenge_message(&[7u8; 32])).unwrap();
        let ev = Evidence {
            x509pop_chain: vec![leaf],
            ..Default::default()
        };
        let err = attestor(root)
            .attest(&ev, &mut Replay(recorded))
            .await
            .unwrap_err();
        assert!(matches!(err, AttestError::Challenge(_)), "{err}");
    }

    #[tokio::test]
    async fn empty_or_garbage_evidence_is_invalid() {
        let (root, _) = ca();
        let key = KeyPair::generate().unwrap();
        let a = attestor(root);
        let err = a
            .attest(&Evidence::default(), &mut Signs(&key))
            .await
            .unwrap_err();
        assert!(matches!(err, AttestError::InvalidEvidence(_)));
        let ev = Evidence {
            x509pop_chain: vec![vec![1, 2, 3]],
            ..Default::default()
        };
        assert!(matches!(
            a.attest(&ev, &mut Signs(&key)).await,
            Err(AttestError::InvalidEvidence(_))
        ));
    }
}
