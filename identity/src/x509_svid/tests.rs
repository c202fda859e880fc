//! Each X509-SVID rule, broken on purpose by a certificate crafted with rcgen.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use super::*;
use crate::bundle::{Bundle, BundleSet};
use crate::spiffe_id::TrustDomain;

struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(td: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{td} root"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
    let cert = params.self_signed(&key).unwrap();
    Ca {
        cert: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

fn intermediate(parent: &Ca, td: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{td} intermediate"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &parent.issuer).unwrap();
    Ca {
        cert: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

fn leaf_params(uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(u.to_string().try_into().unwrap()))
        .collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::hours(1);
    params
}

fn sign(params: CertificateParams, by: &Ca) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    params.signed_by(&key, &by.issuer).unwrap().der().clone()
}

fn bundle_of(td: &str, ca: &Ca) -> Bundle {
    let mut b = Bundle::new(TrustDomain::parse(td).unwrap());
    b.add_x509_authority(ca.cert.clone());
    b
}

fn verify(
    chain: &[CertificateDer<'static>],
    bundle: &Bundle,
) -> Result<VerifiedX509Svid, X509SvidError> {
    verify_x509_svid(chain, bundle, SystemTime::now())
}

const ID: &str = "spiffe://example.org/web";

#[test]
fn a_good_svid_verifies() {
    let root = ca("example.org");
    let leaf = sign(leaf_params(&[ID]), &root);
    let v = verify(&[leaf], &bundle_of("example.org", &root)).unwrap();
    assert_eq!(v.spiffe_id.as_str(), ID);
    assert!(!v.serial.is_empty());
}

#[test]
fn an_intermediate_chain_verifies_and_needs_the_intermediate() {
    let root = ca("example.org");
    let mid = intermediate(&root, "example.org");
    let leaf = sign(leaf_params(&[ID]), &mid);
    let bundle = bundle_of("example.org", &root);
    verify(&[leaf.clone(), mid.cert.clone()], &bundle).unwrap();
    assert!(matches!(
        verify(&[leaf], &bundle),
        Err(X509SvidError::Untrusted { .. })
    ));
}

#[test]
fn each_leaf_rule_has_its_own_error() {
    let root = ca("example.org");
    let bundle = bundle_of("example.org", &root);

    let no_uri = sign(leaf_params(&[]), &root);
    assert_eq!(verify(&[no_uri], &bundle), Err(X509SvidError::NoUriSan));

    let two = sign(leaf_params(&[ID, "spiffe://example.org/other"]), &root);
    assert_eq!(
        verify(&[two], &bundle),
        Err(X509SvidError::MultipleUriSans(2))
    );

    let not_spiffe = sign(leaf_params(&["https://example.org/web"]), &root);
    assert_eq!(
        verify(&[not_spiffe], &bundle),
        Err(X509SvidError::InvalidSpiffeId(IdError::Scheme))
    );

    let td_only = sign(leaf_params(&["spiffe://example.org"]), &root);
    assert!(matches!(
        verify(&[td_only], &bundle),
        Err(X509SvidError::InvalidSpiffeId(IdError::MissingPath(_)))
    ));

    let mut p = leaf_params(&[ID]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert_eq!(
        verify(&[sign(p, &root)], &bundle),
        Err(X509SvidError::LeafIsCa)
    );

    let mut p = leaf_params(&[ID]);
    p.key_usages = vec![];
    assert_eq!(
        verify(&[sign(p, &root)], &bundle),
        Err(X509SvidError::NoKeyUsage)
    );

    let mut p = leaf_params(&[ID]);
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    assert_eq!(
        verify(&[sign(p, &root)], &bundle),
        Err(X509SvidError::NoDigitalSignature)
    );

    let mut p = leaf_params(&[ID]);
    p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    assert_eq!(
        verify(&[sign(p, &root)], &bundle),
        Err(X509SvidError::KeyCertSign)
    );

    let mut p = leaf_params(&[ID]);
    p.key_usages.push(KeyUsagePurpose::CrlSign);
    assert_eq!(
        verify(&[sign(p, &root)], &bundle),
        Err(X509SvidError::CrlSign)
    );
}

#[test]
fn validity_window() {
    let root = ca("example.org");
    let bundle = bundle_of("example.org", &root);
    let now = OffsetDateTime::now_utc();

    let mut p = leaf_params(&[ID]);
    p.not_before = now - time::Duration::hours(2);
    p.not_after = now - time::Duration::hours(1);
    assert!(matches!(
        verify(&[sign(p, &root)], &bundle),
        Err(X509SvidError::Expired { .. })
    ));

    let mut p = leaf_params(&[ID]);
    p.not_before = now + time::Duration::hours(1);
    p.not_after = now + time::Duration::hours(2);
    assert!(matches!(
        verify(&[sign(p, &root)], &bundle),
        Err(X509SvidError::NotYetValid { .. })
    ));

    // The same certificate is valid or expired depending on the clock given.
    let leaf = sign(leaf_params(&[ID]), &root);
    let later = SystemTime::now() + Duration::from_secs(2 * 3600);
    assert!(matches!(
        verify_x509_svid(&[leaf], &bundle, later),
        Err(X509SvidError::Expired { .. })
    ));
}

#[test]
fn trust_is_per_trust_domain() {
    let root = ca("example.org");
    let other_root = ca("other.org");
    let leaf = sign(leaf_params(&[ID]), &root);

    // No bundle for the ID's trust domain.
    let other_bundle = bundle_of("other.org", &other_root);
    assert_eq!(
        verify(std::slice::from_ref(&leaf), &other_bundle),
        Err(X509SvidError::NoBundle("example.org".into()))
    );

    // A bundle for example.org that holds a different CA: untrusted.
    let wrong = bundle_of("example.org", &other_root);
    assert!(matches!(
        verify(std::slice::from_ref(&leaf), &wrong),
        Err(X509SvidError::Untrusted { .. })
    ));

    // A leaf of other.org signed by example.org's CA is not trusted by
    // other.org's bundle, even when example.org's bundle is present too.
    let mut set = BundleSet::new();
    set.insert(bundle_of("example.org", &root));
    set.insert(bundle_of("other.org", &other_root));
    let cross = sign(leaf_params(&["spiffe://other.org/web"]), &root);
    assert!(matches!(
        verify_x509_svid(&[cross], &set, SystemTime::now()),
        Err(X509SvidError::Untrusted { .. })
    ));
    verify_x509_svid(&[leaf], &set, SystemTime::now()).unwrap();
}

#[test]
fn empty_and_garbage_chains() {
    let root = ca("example.org");
    let bundle = bundle_of("example.org", &root);
    assert_eq!(verify(&[], &bundle), Err(X509SvidError::EmptyChain));
    assert!(matches!(
        verify(&[CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])], &bundle),
        Err(X509SvidError::Malformed(_))
    ));
}

#[test]
fn svid_from_pem_keeps_key_secret() {
    let root = ca("example.org");
    let key = KeyPair::generate().unwrap();
    let cert = leaf_params(&[ID]).signed_by(&key, &root.issuer).unwrap();
    let svid = X509Svid::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    assert_eq!(svid.spiffe_id().as_str(), ID);
    assert_eq!(svid.private_key().pkcs8_der(), key.serialized_der());
    let debug = format!("{svid:?}");
    assert!(debug.contains("[redacted]"), "{debug}");
    assert!(!debug.contains(&format!("{:?}", key.serialized_der())));
    assert!(svid.chain_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(
        svid.private_key()
            .to_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(matches!(
        X509Svid::from_pem(cert.pem().as_bytes(), b"junk"),
        Err(X509SvidError::Key(_))
    ));
}
