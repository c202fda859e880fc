use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use signet_identity::x509_svid::verify_x509_svid;
use signet_identity::{JwtSvid, SpiffeId, X509SvidError};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::*;
use crate::clock::ManualClock;
use crate::key_manager::memory::MemoryKeyManager;

const HOUR: Duration = Duration::from_secs(3600);

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn ca_with(config: CaConfig, clock: &ManualClock) -> Ca {
    Ca::new(
        config,
        Arc::new(clock.clone()),
        Arc::new(MemoryKeyManager::default()),
        None,
    )
    .unwrap()
}

/// A CA and the key manager it keeps its keys in.
fn ca_and_keys(clock: &ManualClock) -> (Ca, Arc<dyn KeyManager>) {
    let keys: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::default());
    let ca = Ca::new(
        CaConfig::new(td()),
        Arc::new(clock.clone()),
        keys.clone(),
        None,
    )
    .unwrap();
    (ca, keys)
}

fn ca(clock: &ManualClock) -> Ca {
    ca_with(CaConfig::new(td()), clock)
}

fn workload() -> SpiffeId {
    SpiffeId::parse("spiffe://example.org/web").unwrap()
}

fn spki() -> Vec<u8> {
    KeyPair::generate().unwrap().subject_public_key_info()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

#[test]
fn x509_svid_has_every_field_design_section_3_requires() {
    let clock = ManualClock::new(start());
    let ca = ca(&clock);
    let opts = SvidOptions {
        ttl: None,
        dns_names: vec!["web.example.org".into(), "web".into()],
    };
    let chain = ca.sign_x509_svid(&spki(), &workload(), &opts).unwrap();
    assert_eq!(chain.len(), 1, "a self-signed CA adds no intermediates");
    let leaf = parse(&chain[0]);

    let uris: Vec<_> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, ["spiffe://example.org/web"]);
    assert!(!leaf.is_ca());
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical, "keyUsage is critical");
    assert!(
        ku.value.digital_signature() && ku.value.key_encipherment() && ku.value.key_agreement()
    );
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let serial = leaf.tbs_certificate.raw_serial();
    let significant = serial.iter().skip_while(|b| **b == 0).count();
    assert!(
        (8..=16).contains(&significant),
        "128-bit random serial, got {serial:?}"
    );
    let ski = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("SKI");
    assert!(!ski.is_empty());
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(k) => {
                k.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("AKI");
    let authority = ca.x509_authority();
    let ca_cert = parse(authority.cert());
    let ca_ski = ca_cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .unwrap();
    assert_eq!(aki, ca_ski);
    let now = unix_secs(start());
    assert_eq!(leaf.validity().not_before.timestamp(), now - 10);
    assert_eq!(leaf.validity().not_after.timestamp(), now + 3600);
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, "web.example.org");

    // The signing certificate: cA=true, keyCertSign, URI SAN spiffe://td.
    assert!(ca_cert.is_ca());
    assert!(ca_cert.key_usage().unwrap().unwrap().value.key_cert_sign());
    let ca_uri = ca_cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names[0]
        .clone();
    assert_eq!(ca_uri, GeneralName::URI("spiffe://example.org"));

    let v = verify_x509_svid(&chain, &ca.bundle(), start()).unwrap();
    assert_eq!(v.spiffe_id, workload());
}

#[test]
fn serials_differ_and_no_dns_means_no_cn() {
    let clock = ManualClock::new(start());
    let ca = ca(&clock);
    let a = ca
        .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
        .unwrap();
    let b = ca
        .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
        .unwrap();
    assert_ne!(parse(&a[0]).raw_serial(), parse(&b[0]).raw_serial());
    assert!(parse(&a[0]).subject().iter_common_name().next().is_none());
}

#[test]
fn not_after_is_capped_at_the_ca() {
    let clock = ManualClock::new(start());
    let ca = ca(&clock);
    let opts = SvidOptions {
        ttl: Some(48 * HOUR),
        ..Default::default()
    };
    let chain = ca.sign_x509_svid(&spki(), &workload(), &opts).unwrap();
    let ca_not_after = parse(ca.x509_authority().cert())
        .validity()
        .not_after
        .timestamp();
    assert_eq!(
        parse(&chain[0]).validity().not_after.timestamp(),
        ca_not_after
    );
    // A TTL past what SystemTime can hold is capped the same way, never a
    // panic (the admin API also refuses TTLs over a year).
    let huge = SvidOptions {
        ttl: Some(Duration::MAX),
        ..Default::default()
    };
    let chain = ca.sign_x509_svid(&spki(), &workload(), &huge).unwrap();
    assert_eq!(
        parse(&chain[0]).validity().not_after.timestamp(),
        ca_not_after
    );
    assert!(
        ca.sign_jwt_svid(&workload(), &["db".into()], Some(Duration::MAX))
            .is_ok()
    );
}

#[test]
fn csr_path_verifies_the_request_signature() {
    let clock = ManualClock::new(start());
    let ca = ca(&clock);
    let key = KeyPair::generate().unwrap();
    // The request asks for another identity; only its key is used.
    let params = CertificateParams::new(vec!["evil.example.org".to_string()]).unwrap();
    let csr = params.serialize_request(&key).unwrap();
    let chain = ca
        .sign_x509_svid_csr(csr.der(), &workload(), &SvidOptions::default())
        .unwrap();
    let leaf = parse(&chain[0]);
    assert_eq!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    assert!(
        leaf.subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .len()
            == 1
    );
    verify_x509_svid(&chain, &ca.bundle(), start()).unwrap();

    // Flip a bit inside the signed part: the signature no longer verifies.
    let mut bad = csr.der().to_vec();
    let i = bad.len() - 80;
    bad[i] ^= 0x01;
    let err = ca
        .sign_x509_svid_csr(&bad, &workload(), &SvidOptions::default())
        .unwrap_err();
    assert!(matches!(err, CaError::Csr(_)), "{err}");
    assert!(matches!(
        ca.sign_x509_svid_csr(b"junk", &workload(), &SvidOptions::default()),
        Err(CaError::Csr(_))
    ));
    assert!(matches!(
        ca.sign_x509_svid(b"junk", &workload(), &SvidOptions::default()),
        Err(CaError::PublicKey(_))
    ));
}

#[test]
fn ids_and_names_are_checked() {
    let clock = ManualClock::new(start());
    let ca = ca(&clock);
    let foreign = SpiffeId::parse("spiffe://other.org/web").unwrap();
    assert!(matches!(
        ca.sign_x509_svid(&spki(), &foreign, &SvidOptions::default()),
        Err(CaError::ForeignId { .. })
    ));
    assert!(matches!(
        ca.sign_x509_svid(&spki(), &td().id(), &SvidOptions::default()),
        Err(CaError::NoPath(_))
    ));
    let opts = SvidOptions {
        dns_names: vec!["bad name".into()],
        ..Default::default()
    };
    assert!(matches!(
        ca.sign_x509_svid(&spki(), &workload(), &opts),
        Err(CaError::DnsName { .. })
    ));
    assert!(matches!(
        ca.sign_jwt_svid(&foreign, &["a".into()], None),
        Err(CaError::ForeignId { .. })
    ));
    assert!(matches!(
        ca.sign_jwt_svid(&workload(), &[], None),
        Err(CaError::NoAudience)
    ));
}

#[test]
fn every_key_type_issues_verifiable_svids() {
    for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
        let clock = ManualClock::new(SystemTime::now());
        let mut config = CaConfig::new(td());
        config.key_type = kt;
        config.jwt_key_type = kt;
        let ca = ca_with(config, &clock);
        let chain = ca
            .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
            .unwrap();
        verify_x509_svid(&chain, &ca.bundle(), clock.now()).unwrap_or_else(|e| panic!("{kt}: {e}"));
        let token = ca.sign_jwt_svid(&workload(), &["db".into()], None).unwrap();
        JwtSvid::verify(&token, &ca.bundle(), "db", clock.now())
            .unwrap_or_else(|e| panic!("{kt}: {e}"));
    }
}

#[test]
fn jwt_svid_claims() {
    let clock = ManualClock::new(SystemTime::now());
    let mut config = CaConfig::new(td());
    config.jwt_issuer = Some("https://oidc.example.org".into());
    let ca = ca_with(config, &clock);
    let token = ca
        .sign_jwt_svid(&workload(), &["db".into(), "cache".into()], None)
        .unwrap();
    let svid = JwtSvid::verify(&token, &ca.bundle(), "cache", clock.now()).unwrap();
    assert_eq!(svid.spiffe_id(), &workload());
    assert_eq!(svid.claims()["iss"], "https://oidc.example.org");
    let now = unix_secs(clock.now()) as u64;
    assert_eq!(svid.expiry(), now + 300);
    assert_eq!(svid.issued_at(), Some(now));
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some(ca.jwt_key().kid()));
    // One audience is a plain string.
    let single = ca.sign_jwt_svid(&workload(), &["db".into()], None).unwrap();
    assert_eq!(
        JwtSvid::parse_insecure(&single).unwrap().claims()["aud"],
        "db"
    );
    // Past its expiry the token is refused.
    clock.advance(Duration::from_secs(301));
    assert!(JwtSvid::verify(&token, &ca.bundle(), "db", clock.now()).is_err());
}

#[test]
fn rotation_follows_the_schedule() {
    let clock = ManualClock::new(start());
    let ca = ca(&clock);
    let first = ca.x509_authority();
    let first_kid = ca.jwt_key().kid().to_owned();
    assert_eq!(ca.bundle().sequence(), 1);
    assert_eq!(ca.rotate().unwrap(), Rotation::default());

    // 24 h life: prepare at 12 h remaining.
    clock.advance(11 * HOUR);
    assert_eq!(ca.rotate().unwrap(), Rotation::default());
    clock.advance(HOUR);
    let r = ca.rotate().unwrap();
    assert!(r.x509_prepared && r.jwt_prepared && r.bundle_changed && !r.x509_activated);
    let bundle = ca.bundle();
    assert_eq!(bundle.sequence(), 2);
    assert_eq!(
        bundle.x509_authorities().len(),
        2,
        "the next CA is published before use"
    );
    assert_eq!(bundle.jwt_authorities().count(), 2);
    assert!(Arc::ptr_eq(&ca.x509_authority(), &first), "not active yet");

    // Activate at 4 h remaining (24 h / 6).
    clock.advance(7 * HOUR);
    assert!(!ca.rotate().unwrap().x509_activated);
    clock.advance(HOUR);
    let r = ca.rotate().unwrap();
    assert!(r.x509_activated && r.jwt_activated && !r.bundle_changed);
    assert!(!Arc::ptr_eq(&ca.x509_authority(), &first));
    assert_ne!(ca.jwt_key().kid(), first_kid);
    let chain = ca
        .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
        .unwrap();
    verify_x509_svid(&chain, &ca.bundle(), clock.now()).unwrap();

    // At 24 h the first authority expires and leaves the bundle; the active
    // one (born at 12 h) is at half-life, so its successor is published in
    // the same step: one bundle change, one sequence bump.
    clock.advance(4 * HOUR);
    let r = ca.rotate().unwrap();
    assert_eq!(r.pruned, 2);
    assert!(r.x509_prepared && r.jwt_prepared);
    let bundle = ca.bundle();
    assert_eq!(bundle.sequence(), 3);
    assert!(!bundle.x509_authorities().contains(first.cert()));
    assert!(
        bundle
            .x509_authorities()
            .contains(ca.x509_authority().cert())
    );
    assert_eq!(bundle.x509_authorities().len(), 2);
    assert!(bundle.jwt_authority(&first_kid).is_none());
}

#[test]
fn rotation_over_simulated_days_never_leaves_a_gap() {
    let clock = ManualClock::new(start());
    let ca = ca(&clock);
    let mut last_seq = ca.bundle().sequence();
    let mut activations = 0;
    let mut previous_bundle = ca.bundle();
    // Ten days, one tick every 10 minutes.
    for _ in 0..(10 * 24 * 6) {
        clock.advance(Duration::from_secs(600));
        let r = ca.rotate().unwrap();
        activations += usize::from(r.x509_activated);
        let bundle = ca.bundle();
        assert!(bundle.sequence() >= last_seq, "sequence never goes back");
        assert_eq!(
            bundle.sequence() != last_seq,
            !bundle.same_keys(&previous_bundle)
        );
        last_seq = bundle.sequence();
        previous_bundle = bundle.clone();
        let active = ca.x509_authority();
        assert!(
            active.not_after() > clock.now(),
            "the active CA is always valid"
        );
        assert!(bundle.x509_authorities().contains(active.cert()));
        // Every SVID minted now verifies, and remains valid for a fair share
        // of its TTL (the CA has at least 4 h left after activation).
        let chain = ca
            .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
            .unwrap();
        verify_x509_svid(&chain, &bundle, clock.now()).unwrap();
        let token = ca.sign_jwt_svid(&workload(), &["a".into()], None).unwrap();
        JwtSvid::verify(&token, &bundle, "a", clock.now()).unwrap();
    }
    // 24 h authorities: the first activates at 20 h, each successor (born at
    // its predecessor's half-life) 12 h later: 19 activations in 240 h.
    assert!(
        (18..=20).contains(&activations),
        "{activations} activations"
    );
}

#[test]
fn long_lived_cas_use_the_30_and_7_day_caps() {
    let life = 90 * DAY;
    let t0 = start();
    let na = t0 + life;
    assert!(!due(t0, na, na - 31 * DAY, 2, 30));
    assert!(due(t0, na, na - 30 * DAY, 2, 30));
    assert!(!due(t0, na, na - 8 * DAY, 6, 7));
    assert!(due(t0, na, na - 7 * DAY, 6, 7));
    // Short lives use the fractions.
    assert!(due(t0, t0 + DAY, t0 + 12 * HOUR, 2, 30));
    assert!(!due(t0, t0 + DAY, t0 + 11 * HOUR, 2, 30));
}

#[test]
fn an_expired_svid_is_refused_after_the_clock_moves() {
    let clock = ManualClock::new(start());
    let ca = ca(&clock);
    let chain = ca
        .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
        .unwrap();
    clock.advance(2 * HOUR);
    assert!(matches!(
        verify_x509_svid(&chain, &ca.bundle(), clock.now()),
        Err(X509SvidError::Expired { .. })
    ));
}

pub(crate) fn write_upstream(dir: &Path) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Upstream Root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join("upstream.pem");
    let key_path = dir.join("upstream.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[test]
fn upstream_ca_makes_ours_an_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = write_upstream(dir.path());
    let up = UpstreamAuthority::load(&cert_path, &key_path, None).unwrap();
    let root = up.roots()[0].clone();
    let clock = ManualClock::new(SystemTime::now());
    let ca = Ca::new(
        CaConfig::new(td()),
        Arc::new(clock.clone()),
        Arc::new(MemoryKeyManager::default()),
        Some(up),
    )
    .unwrap();
    let bundle = ca.bundle();
    assert_eq!(
        bundle.x509_authorities(),
        [root],
        "the bundle holds the upstream root"
    );
    let chain = ca
        .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf + our intermediate");
    assert_eq!(&chain[1], ca.x509_authority().cert());
    verify_x509_svid(&chain, &bundle, clock.now()).unwrap();
    assert!(verify_x509_svid(&chain[..1], &bundle, clock.now()).is_err());
    // Rotation keeps the bundle on the upstream root.
    clock.advance(12 * HOUR);
    let r = ca.rotate().unwrap();
    assert!(r.x509_prepared);
    assert_eq!(ca.bundle().x509_authorities().len(), 1);
}

#[test]
fn upstream_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = write_upstream(dir.path());
    let missing = dir.path().join("missing.pem");
    let err = UpstreamAuthority::load(&missing, &key_path, None).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let err = UpstreamAuthority::load(&cert_path, &other_key, None).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn journal_restores_the_same_authorities() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn KeyManager> =
        Arc::new(crate::key_manager::disk::DiskKeyManager::new(dir.path().into()).unwrap());
    let clock = ManualClock::new(start());
    let ca = Ca::new(
        CaConfig::new(td()),
        Arc::new(clock.clone()),
        keys.clone(),
        None,
    )
    .unwrap();
    clock.advance(12 * HOUR);
    ca.rotate().unwrap();
    let journal = ca.journal().unwrap();
    assert_eq!(journal.x509.len(), 2, "current and prepared");
    let text = serde_json::to_string(&journal).unwrap();
    assert!(
        !text.contains("PRIVATE KEY"),
        "the journal holds no key material"
    );
    drop(ca);

    let journal: CaJournal = serde_json::from_str(&text).unwrap();
    let back = Ca::restore(
        CaConfig::new(td()),
        Arc::new(clock.clone()),
        keys.clone(),
        None,
        journal,
    )
    .unwrap();
    assert_eq!(
        back.journal().unwrap().x509,
        serde_json::from_str::<CaJournal>(&text).unwrap().x509
    );
    assert_eq!(back.bundle().sequence(), 2);
    let chain = back
        .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
        .unwrap();
    verify_x509_svid(&chain, &back.bundle(), clock.now()).unwrap();
    let token = back
        .sign_jwt_svid(&workload(), &["a".into()], None)
        .unwrap();
    JwtSvid::verify(&token, &back.bundle(), "a", clock.now()).unwrap();

    // Activation retires the old key from the key store.
    let old_key = back.journal().unwrap().x509[0].key_id.clone();
    clock.advance(8 * HOUR);
    assert!(back.rotate().unwrap().x509_activated);
    assert!(keys.load(&old_key).unwrap().is_none());
}

#[test]
fn a_journal_that_cannot_be_honoured_is_an_error() {
    let clock = ManualClock::new(start());
    let (ca, keys) = ca_and_keys(&clock);
    let journal = ca.journal().unwrap();

    let other_td = CaConfig::new(TrustDomain::parse("other.org").unwrap());
    let err = Ca::restore(
        other_td,
        Arc::new(clock.clone()),
        keys.clone(),
        None,
        journal.clone(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("trust domain example.org"),
        "{err}"
    );

    let empty: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::default());
    let err = Ca::restore(
        CaConfig::new(td()),
        Arc::new(clock.clone()),
        empty,
        None,
        journal.clone(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("missing from the key store"),
        "{err}"
    );

    let mut wrong = journal;
    wrong.version = 99;
    assert!(Ca::restore(CaConfig::new(td()), Arc::new(clock), keys, None, wrong).is_err());
}

/// A server that could not rotate on time (stopped, or starved) prepares
/// the next authority late; it publishes it for a sixth of the life before
/// activating it, so a federated server fetching on its hint learns it
/// first; in the current authority's last twelfth, issuing wins.
#[test]
fn a_late_successor_is_published_before_it_signs() {
    let clock = ManualClock::new(start());
    let ca = ca(&clock);
    let first = ca.x509_authority();
    let life = first
        .not_after()
        .duration_since(first.not_before())
        .unwrap();
    // No rotation until a sixth of the life is left.
    clock.set(first.not_after() - life / 6 + Duration::from_secs(1));
    let r = ca.rotate().unwrap();
    assert!(r.x509_prepared && r.jwt_prepared && r.bundle_changed);
    assert!(
        !r.x509_activated && !r.jwt_activated,
        "activated unpublished"
    );
    assert!(Arc::ptr_eq(&ca.x509_authority(), &first));
    let next = ca.next_x509_authority().unwrap();
    assert!(ca.bundle().x509_authorities().contains(next.cert()));

    clock.advance(life / 24);
    assert!(
        !ca.rotate().unwrap().x509_activated,
        "published too briefly"
    );
    // The last twelfth: activated, whatever its time in the bundle.
    clock.set(first.not_after() - life / 12 + Duration::from_secs(60));
    let r = ca.rotate().unwrap();
    assert!(r.x509_activated && r.jwt_activated);
    assert!(Arc::ptr_eq(&ca.x509_authority(), &next));
}

#[test]
fn authority_operations_follow_spires_rules() {
    use super::operations::{AuthorityError, AuthorityKind::*, AuthorityState::*};
    let clock = ManualClock::new(start());
    let ca = ca(&clock);
    let refused = |r: Result<(), CaError>| match r {
        Err(CaError::Authority(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    for kind in [X509, Jwt] {
        let first = ca.authorities(kind);
        assert_eq!(first.len(), 1, "{kind}: {first:?}");
        assert_eq!(first[0].state, Active);
        let active = first[0].id.clone();
        let seq = ca.bundle().sequence();

        // The active authority can be neither tainted nor revoked; unknown
        // ids are named.
        assert!(matches!(
            refused(ca.taint(kind, &active)),
            AuthorityError::Active { .. }
        ));
        assert!(matches!(
            refused(ca.revoke(kind, &active)),
            AuthorityError::Active { .. }
        ));
        assert!(matches!(
            refused(ca.taint(kind, "00ff")),
            AuthorityError::Unknown { .. }
        ));
        assert!(matches!(
            ca.activate(kind, "00ff"),
            Err(CaError::Authority(AuthorityError::NothingPrepared { .. }))
        ));

        // Prepare: published, not signing.
        let prepared = ca.prepare(kind).unwrap();
        assert_eq!(prepared.state, Prepared);
        assert!(
            ca.bundle().sequence() > seq,
            "{kind}: prepare bumps the sequence"
        );
        assert!(matches!(
            refused(ca.taint(kind, &prepared.id)),
            AuthorityError::Prepared { .. }
        ));
        assert!(matches!(
            ca.activate(kind, &active),
            Err(CaError::Authority(AuthorityError::NotPrepared { .. }))
        ));
        // Activate: the prepared one signs, the active one is old.
        ca.activate(kind, &prepared.id).unwrap();
        let now: Vec<_> = ca
            .authorities(kind)
            .into_iter()
            .map(|a| (a.id, a.state))
            .collect();
        assert!(
            now.contains(&(prepared.id.clone(), Active)),
            "{kind}: {now:?}"
        );
        assert!(now.contains(&(active.clone(), Old)), "{kind}: {now:?}");

        // Revoke only after taint; taint once.
        assert!(matches!(
            refused(ca.revoke(kind, &active)),
            AuthorityError::NotTainted { .. }
        ));
        let seq = ca.bundle().sequence();
        ca.taint(kind, &active).unwrap();
        assert!(ca.bundle().is_tainted(&active));
        assert!(
            ca.bundle().sequence() > seq,
            "{kind}: taint bumps the sequence"
        );
        assert!(matches!(
            refused(ca.taint(kind, &active)),
            AuthorityError::AlreadyTainted { .. }
        ));
        ca.revoke(kind, &active).unwrap();
        assert!(
            !ca.authorities(kind).iter().any(|a| a.id == active),
            "{kind}: revoked is gone"
        );
        assert!(matches!(
            refused(ca.revoke(kind, &active)),
            AuthorityError::Unknown { .. }
        ));
    }
    // What the new authorities sign verifies; the revoked root left the
    // bundle, and JWT-SVIDs carry the new kid.
    let chain = ca
        .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
        .unwrap();
    assert_eq!(ca.bundle().x509_authorities().len(), 1);
    verify_x509_svid(&chain, &ca.bundle(), clock.now()).unwrap();
    let jwt = ca
        .sign_jwt_svid(&workload(), &["aud".to_string()], None)
        .unwrap();
    let kid = signet_identity::jwt_svid::key_id_insecure(&jwt).unwrap();
    assert_eq!(ca.authorities(Jwt)[0].id, kid);
    assert_eq!(ca.bundle().jwt_authorities().count(), 1);
}

#[test]
fn taints_survive_the_journal() {
    use super::operations::AuthorityKind::X509;
    let clock = ManualClock::new(start());
    let (ca, keys) = ca_and_keys(&clock);
    let old = ca.authorities(X509)[0].id.clone();
    let next = ca.prepare(X509).unwrap().id;
    ca.activate(X509, &next).unwrap();
    ca.taint(X509, &old).unwrap();
    let restored = Ca::restore(
        CaConfig::new(td()),
        Arc::new(clock.clone()),
        keys,
        None,
        ca.journal().unwrap(),
    )
    .unwrap();
    assert!(restored.bundle().is_tainted(&old));
    assert_eq!(restored.authorities(X509)[0].id, next);
}

#[test]
fn an_upstream_root_is_tainted_and_revoked_once_replaced() {
    use super::operations::{AuthorityError, AuthorityKind::*, AuthorityState::*};
    use signet_identity::x509_svid::chain_authority_ids;
    let refused = |r: Result<(), CaError>| match r {
        Err(CaError::Authority(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = write_upstream(dir.path());
    let old_files = (
        std::fs::read(&cert_path).unwrap(),
        std::fs::read(&key_path).unwrap(),
    );
    let clock = ManualClock::new(SystemTime::now());
    let keys: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::default());
    let up = UpstreamAuthority::load(&cert_path, &key_path, None).unwrap();
    let ca = Ca::new(
        CaConfig::new(td()),
        Arc::new(clock.clone()),
        keys.clone(),
        Some(up),
    )
    .unwrap();
    let roots = ca.authorities(UpstreamX509);
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert_eq!(roots[0].state, Active);
    let old_root = roots[0].id.clone();
    let old_svid = ca
        .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
        .unwrap();
    assert!(chain_authority_ids(&old_svid).contains(&old_root));

    // The root the active authority chains to cannot be tainted; our own
    // intermediates are not what the bundle holds.
    assert!(matches!(
        refused(ca.taint(UpstreamX509, &old_root)),
        AuthorityError::UpstreamInUse { .. }
    ));
    assert!(matches!(
        refused(ca.taint(X509, &old_root)),
        AuthorityError::Upstream
    ));

    // The upstream CA is replaced on disk; prepare reads it again.
    write_upstream(dir.path());
    let prepared = ca.prepare(X509).unwrap();
    let roots = ca.authorities(UpstreamX509);
    assert_eq!(roots.len(), 2, "both roots published: {roots:?}");
    let new_root = roots.iter().find(|r| r.id != old_root).unwrap().id.clone();
    assert_eq!(
        roots.iter().find(|r| r.id == new_root).unwrap().state,
        Prepared
    );
    assert!(matches!(
        refused(ca.taint(UpstreamX509, &new_root)),
        AuthorityError::UpstreamInUse { .. }
    ));
    ca.activate(X509, &prepared.id).unwrap();
    let state_of = |id: &str| {
        ca.authorities(UpstreamX509)
            .into_iter()
            .find(|r| r.id == id)
            .map(|r| (r.state, r.tainted))
    };
    assert_eq!(state_of(&old_root), Some((Old, false)));
    assert_eq!(state_of(&new_root), Some((Active, false)));

    // Revoke only after taint; taint marks what chains to it.
    assert!(matches!(
        refused(ca.revoke(UpstreamX509, &old_root)),
        AuthorityError::NotTainted { .. }
    ));
    ca.taint(UpstreamX509, &old_root).unwrap();
    assert_eq!(state_of(&old_root), Some((Old, true)));
    let new_svid = ca
        .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
        .unwrap();
    let bundle = ca.bundle();
    assert!(
        chain_authority_ids(&old_svid)
            .iter()
            .any(|id| bundle.is_tainted(id))
    );
    assert!(
        !chain_authority_ids(&new_svid)
            .iter()
            .any(|id| bundle.is_tainted(id))
    );
    verify_x509_svid(&old_svid, &bundle, clock.now()).unwrap();

    ca.revoke(UpstreamX509, &old_root).unwrap();
    assert_eq!(
        state_of(&old_root),
        None,
        "the revoked root left the bundle"
    );
    assert!(verify_x509_svid(&old_svid, &ca.bundle(), clock.now()).is_err());
    verify_x509_svid(&new_svid, &ca.bundle(), clock.now()).unwrap();

    // Putting the old upstream CA back cannot bring the revoked root back,
    // after a restart either.
    std::fs::write(&cert_path, &old_files.0).unwrap();
    std::fs::write(&key_path, &old_files.1).unwrap();
    let restored = Ca::restore(
        CaConfig::new(td()),
        Arc::new(clock.clone()),
        keys,
        Some(UpstreamAuthority::load(&cert_path, &key_path, None).unwrap()),
        ca.journal().unwrap(),
    )
    .unwrap();
    for ca in [&ca, &restored] {
        let err = ca.prepare(X509).unwrap_err();
        assert!(
            err.to_string().contains("revoked authority")
                && err.to_string().contains("upstream.pem"),
            "{err}"
        );
        assert!(
            ca.authorities(UpstreamX509)
                .iter()
                .all(|r| r.id != old_root)
        );
    }
    assert!(matches!(
        refused(restored.taint(UpstreamX509, &old_root)),
        AuthorityError::Unknown { .. }
    ));

    // Without an upstream CA there is nothing to taint there.
    let own = ca_with(CaConfig::new(td()), &clock);
    assert!(own.authorities(UpstreamX509).is_empty());
    assert!(matches!(
        refused(own.taint(UpstreamX509, &old_root)),
        AuthorityError::NoUpstream
    ));
}

/// How the fake remote upstream answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Good,
    /// Signed, but sent with another CA's root.
    OtherRoot,
    /// A CA certificate for a key that is not ours.
    OtherKey,
    /// Not a CA.
    Leaf,
    Down,
}

/// An upstream PKI that signs CSRs with a root of its own.
#[derive(Debug)]
struct FakeRemote {
    root: signet_testkit::pki::TestCa,
    answer: std::sync::Mutex<Answer>,
    clock: ManualClock,
}

impl FakeRemote {
    fn new(clock: &ManualClock) -> Arc<Self> {
        Arc::new(Self {
            root: signet_testkit::pki::TestCa::new("enterprise root"),
            answer: std::sync::Mutex::new(Answer::Good),
            clock: clock.clone(),
        })
    }
    fn answer(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }
}

#[async_trait::async_trait]
impl RemoteUpstream for FakeRemote {
    async fn mint_x509_ca(&self, csr_pem: &str, ttl: Duration) -> Result<MintedCa, String> {
        let answer = *self.answer.lock().unwrap();
        if answer == Answer::Down {
            return Err("connection refused".into());
        }
        let other_pem;
        let csr_pem = if answer == Answer::OtherKey {
            let other = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            other_pem = params.serialize_request(&other).unwrap().pem().unwrap();
            &other_pem
        } else {
            csr_pem
        };
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let now = self.clock.now();
        csr.params.not_before = to_offset(now - BACKDATE);
        csr.params.not_after = to_offset(now + ttl);
        if answer == Answer::Leaf {
            csr.params.is_ca = IsCa::NoCa;
        }
        let cert = csr.signed_by(self.root.issuer()).unwrap();
        let root = if answer == Answer::OtherRoot {
            signet_testkit::pki::TestCa::new("someone else").der
        } else {
            self.root.der.clone()
        };
        Ok(MintedCa {
            cert: cert.der().clone(),
            chain: Vec::new(),
            roots: vec![root],
        })
    }
    fn describe(&self) -> String {
        "fake PKI".into()
    }
}

fn key_count(keys: &Arc<dyn KeyManager>) -> String {
    let debug = format!("{keys:?}");
    debug
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A CA under a [`FakeRemote`], the key manager it keeps its keys in, and
/// the upstream.
async fn remote_ca(clock: &ManualClock) -> (Ca, Arc<dyn KeyManager>, Arc<FakeRemote>) {
    let keys: Arc<dyn KeyManager> = Arc::new(MemoryKeyManager::default());
    let remote = FakeRemote::new(clock);
    let ca = Ca::new_remote(
        CaConfig::new(td()),
        Arc::new(clock.clone()),
        keys.clone(),
        remote.clone(),
    )
    .await
    .unwrap();
    (ca, keys, remote)
}

#[tokio::test]
async fn a_remote_upstream_signs_every_authority_off_the_lock() {
    let clock = ManualClock::new(start());
    let (ca, keys, remote) = remote_ca(&clock).await;
    // The bundle holds the upstream's root alone; SVIDs chain to it.
    assert_eq!(
        ca.bundle().x509_authorities(),
        std::slice::from_ref(&remote.root.der)
    );
    let chain = ca
        .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
        .unwrap();
    assert_eq!(chain.len(), 2);
    verify_x509_svid(&chain, &ca.bundle(), start()).unwrap();
    // The placeholder's key is gone: one X.509 and one JWT key remain.
    assert_eq!(key_count(&keys), "MemoryKeyManager(2");

    // Past half-life `rotate` prepares nothing by itself: the caller asks
    // the upstream with no lock held, then installs.
    clock.advance(HOUR * 13);
    assert!(ca.remote_prepare_due());
    assert!(!ca.rotate().unwrap().x509_prepared);
    let minted = ca.mint_remote().await.unwrap();
    let second = ca.mint_remote().await.unwrap();
    assert!(ca.install_remote(minted, false).unwrap());
    assert!(!ca.remote_prepare_due());
    // One prepared meanwhile wins; the other's key is dropped.
    assert!(!ca.install_remote(second, false).unwrap());
    assert_eq!(key_count(&keys), "MemoryKeyManager(4");
    let prepared = ca.next_x509_authority().unwrap();
    clock.advance(HOUR * 8);
    assert!(ca.rotate().unwrap().x509_activated);
    assert_eq!(ca.x509_authority().cert(), prepared.cert());
    assert_eq!(
        ca.bundle().x509_authorities(),
        std::slice::from_ref(&remote.root.der)
    );
    // The operator's synchronous prepare cannot reach the upstream.
    let err = ca.prepare(AuthorityKind::X509).unwrap_err().to_string();
    assert!(err.contains("remote upstream"), "{err}");
}

#[tokio::test]
async fn a_remote_answer_that_is_not_a_ca_for_our_key_under_its_root_is_refused() {
    let clock = ManualClock::new(start());
    let (ca, keys, remote) = remote_ca(&clock).await;
    let before = key_count(&keys);
    for (answer, says) in [
        (Answer::OtherRoot, "does not lead to any of its roots"),
        (Answer::OtherKey, "does not match"),
        (Answer::Leaf, "is not a CA"),
        (Answer::Down, "connection refused"),
    ] {
        remote.answer(answer);
        let err = ca.mint_remote().await.unwrap_err().to_string();
        assert!(err.contains("upstream CA fake PKI"), "{answer:?}: {err}");
        assert!(err.contains(says), "{answer:?}: {err}");
        // The key made for the refused authority is not kept.
        assert_eq!(key_count(&keys), before, "{answer:?}");
    }
    // Nothing changed: the same authority signs, the same root is trusted.
    assert!(ca.next_x509_authority().is_none());
    assert_eq!(
        ca.bundle().x509_authorities(),
        std::slice::from_ref(&remote.root.der)
    );

    // Down until the active authority expires: nothing more is signed
    // (an SVID would be expired at birth), and the error says why.
    clock.advance(HOUR * 25);
    ca.rotate().unwrap();
    let err = ca
        .sign_x509_svid(&spki(), &workload(), &SvidOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the active X.509 authority expired at"),
        "{err}"
    );

    // A CA that cannot reach its upstream at first start does not start.
    let err = Ca::new_remote(
        CaConfig::new(td()),
        Arc::new(clock.clone()),
        Arc::new(MemoryKeyManager::default()),
        remote,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("connection refused"), "{err}");
}

#[test]
fn a_downstream_ca_is_an_intermediate_that_never_outlives_its_signer() {
    let clock = ManualClock::new(start());
    let ca = ca(&clock);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap();

    // Asked for a week: capped at our CA TTL and our authority's end.
    let (cert, chain) = ca.sign_downstream_ca(csr.der(), HOUR * 24 * 7).unwrap();
    assert!(chain.is_empty(), "our self-signed authority is a root");
    let parsed = parse(&cert);
    assert!(parsed.is_ca());
    assert_eq!(
        parsed.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    assert!(
        parsed
            .verify_signature(Some(parse(ca.x509_authority().cert()).public_key()))
            .is_ok()
    );
    assert_eq!(
        parsed.validity().not_after.timestamp(),
        parse(ca.x509_authority().cert())
            .validity()
            .not_after
            .timestamp()
    );
    // Short: as asked.
    let (short, _) = ca.sign_downstream_ca(csr.der(), HOUR).unwrap();
    assert_eq!(
        parse(&short).validity().not_after.timestamp(),
        unix_secs(start() + HOUR)
    );

    // A request whose signature does not verify is refused.
    let mut bad = csr.der().to_vec();
    let at = bad.len() - 40;
    bad[at] ^= 1;
    let err = ca.sign_downstream_ca(&bad, HOUR).unwrap_err().to_string();
    assert!(err.contains("request"), "{err}");
}

#[test]
fn downstream_jwt_keys_join_the_bundle_until_they_expire() {
    let clock = ManualClock::new(start());
    let ca = ca(&clock);
    let spki = KeyPair::generate().unwrap().subject_public_key_info();
    let key = JwtAuthority::from_spki("downstream-key", &spki).unwrap();
    let ours = ca.jwt_key().kid().to_owned();
    let seq = ca.bundle().sequence();
    assert!(
        ca.add_downstream_jwt_key(key.clone(), start() + HOUR)
            .unwrap()
    );
    assert!(ca.bundle().jwt_authority("downstream-key").is_some());
    assert!(ca.bundle().sequence() > seq);
    // Once only; and never over a kid the bundle holds (ours included).
    assert!(!ca.add_downstream_jwt_key(key, start() + HOUR).unwrap());
    let impostor = JwtAuthority::from_spki(&ours, &spki).unwrap();
    assert!(!ca.add_downstream_jwt_key(impostor, start() + HOUR).unwrap());
    assert_ne!(
        ca.bundle().jwt_authority(&ours).unwrap().jwk(),
        JwtAuthority::from_spki(&ours, &spki).unwrap().jwk()
    );
    // An expired key is refused; a published one leaves at its expiry.
    let old = JwtAuthority::from_spki("old", &spki).unwrap();
    assert!(ca.add_downstream_jwt_key(old, start()).is_err());
    clock.advance(HOUR * 2);
    ca.rotate().unwrap();
    assert!(ca.bundle().jwt_authority("downstream-key").is_none());
}
