//! The SPIFFE bundle endpoint as a federated server's client meets it:
//! TLS to the endpoint, authenticated per profile (`https_spiffe`: the
//! server's SPIFFE ID checked against a bundle of its trust domain;
//! `https_web`: a web PKI root and a DNS name), then `GET`, then the body
//! parsed as SPIFFE bundle JSON.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use signet_identity::{Bundle, BundleSet, SpiffeId, TrustDomain};
use signet_server::federation::{
    BundleEndpoint, EndpointAuth, EndpointProfile, Relationship, refresh,
};
use signet_server::{RunConfig, Running};
use signet_testkit::pki::{Leaf, TestCa};
use signet_tls::{SharedBundles, SpiffeVerifier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_ID: &str = "spiffe://example.org/signet/server";

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

async fn start(dir: &Path, profile: EndpointProfile) -> Result<Running, signet_server::RunError> {
    let mut config = RunConfig::in_dir(td(), dir);
    config.federation = Some(BundleEndpoint {
        listen: "127.0.0.1:0".parse().unwrap(),
        profile,
        refresh_hint: Duration::from_secs(42),
    });
    let (_stop, stop) = tokio::sync::watch::channel(false);
    // The sender may go: the server stops only when told to, or dropped.
    std::mem::forget(_stop);
    signet_server::start(config, stop).await
}

/// A federated server's client of an `https_spiffe` endpoint: it holds
/// `bundle` and accepts only `expected_id`.
fn spiffe_client(bundle: Bundle, expected_id: &str) -> rustls::ClientConfig {
    let mut set = BundleSet::new();
    set.insert(bundle);
    let expected = SpiffeId::parse(expected_id).unwrap();
    let verifier = SpiffeVerifier::new(
        SharedBundles::new(set),
        Arc::new(move |id: &SpiffeId| *id == expected),
    );
    rustls::ClientConfig::builder_with_provider(signet_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth()
}

/// A web client trusting `root` only.
fn web_client(root: &TestCa) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.der.clone()).unwrap();
    rustls::ClientConfig::builder_with_provider(signet_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// `METHOD /` over TLS: (status, body), or the TLS error.
async fn request(
    addr: SocketAddr,
    config: rustls::ClientConfig,
    name: &str,
    method: &str,
) -> Result<(u16, String), std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(
        format!("{method} / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut text = String::new();
    tls.read_to_string(&mut text).await?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Ok((status, body.to_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn https_spiffe_serves_the_bundle_to_a_client_holding_the_trust_domain_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), EndpointProfile::HttpsSpiffe)
        .await
        .unwrap();
    let addr = running.federation_addr.expect("the endpoint runs");
    let own = running.server.own_bundle().await.unwrap();

    let (status, body) = request(
        addr,
        spiffe_client(own.clone(), SERVER_ID),
        "example.org",
        "GET",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let served = Bundle::parse_json(td(), body.as_bytes()).unwrap();
    assert!(served.same_keys(&own), "{body}");
    assert_eq!(served.sequence(), own.sequence());
    assert_eq!(served.refresh_hint(), Some(42));
    assert!(own.jwt_authorities().count() > 0);

    // Only GET and HEAD.
    let (status, _) = request(
        addr,
        spiffe_client(own.clone(), SERVER_ID),
        "example.org",
        "POST",
    )
    .await
    .unwrap();
    assert_eq!(status, 405);

    // A client expecting another identity refuses the endpoint.
    let refused = request(
        addr,
        spiffe_client(own, "spiffe://example.org/someone-else"),
        "example.org",
        "GET",
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    // So does one holding another trust domain's roots for it.
    let mut stranger = Bundle::new(td());
    stranger.add_x509_authority(TestCa::for_trust_domain("example.org").der);
    let refused = request(
        addr,
        spiffe_client(stranger, SERVER_ID),
        "example.org",
        "GET",
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
}

fn write_web_cert(dir: &Path, ca: &TestCa) -> (std::path::PathBuf, std::path::PathBuf) {
    let leaf = ca.leaf(&Leaf {
        dns: &["localhost"],
        ..Leaf::default()
    });
    let cert = dir.join("web.pem");
    let key = dir.join("web.key");
    // Written to a temporary name and renamed: a reader never sees half.
    for (path, text) in [(&cert, &leaf.pem), (&key, &leaf.key_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    (cert, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_web_serves_with_a_web_certificate_and_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCa::new("web root 1");
    let (cert, key) = write_web_cert(dir.path(), &first);
    let running = start(
        dir.path(),
        EndpointProfile::HttpsWeb {
            cert: cert.clone(),
            key: key.clone(),
        },
    )
    .await
    .unwrap();
    let addr = running.federation_addr.unwrap();
    let (status, body) = request(addr, web_client(&first), "localhost", "GET")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let served = Bundle::parse_json(td(), body.as_bytes()).unwrap();
    assert!(served.same_keys(&running.server.own_bundle().await.unwrap()));
    // The wrong name is refused by a web client.
    assert!(
        request(addr, web_client(&first), "example.com", "GET")
            .await
            .is_err()
    );

    // New files: picked up without a restart.
    let second = TestCa::new("web root 2");
    write_web_cert(dir.path(), &second);
    let deadline = std::time::Instant::now() + signet_testkit::DEADLINE;
    loop {
        if request(addr, web_client(&second), "localhost", "GET")
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_web_certificate_fails_the_start_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("missing.pem");
    let key = dir.path().join("missing.key");
    let err = start(dir.path(), EndpointProfile::HttpsWeb { cert, key })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bundle endpoint") && err.contains("missing.pem"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    // A certificate with another certificate's key.
    let (_, key) = write_web_cert(dir.path(), &TestCa::new("root"));
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (other_cert, _) = write_web_cert(&other, &TestCa::new("root 2"));
    let err = start(
        dir.path(),
        EndpointProfile::HttpsWeb {
            cert: other_cert,
            key,
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("bundle endpoint certificate"), "{err}");
}

fn partner() -> TrustDomain {
    TrustDomain::parse("partner.test").unwrap()
}

async fn start_td(dir: &Path, td: TrustDomain, endpoint: bool) -> Running {
    let mut config = RunConfig::in_dir(td, dir);
    if endpoint {
        config.federation = Some(BundleEndpoint {
            listen: "127.0.0.1:0".parse().unwrap(),
            profile: EndpointProfile::HttpsSpiffe,
            refresh_hint: Duration::from_secs(1),
        });
    }
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    std::mem::forget(stop_tx);
    signet_server::start(config, stop).await.unwrap()
}

fn relationship(url: String, endpoint_id: &str) -> Relationship {
    Relationship {
        trust_domain: "partner.test".into(),
        bundle_endpoint_url: url,
        auth: EndpointAuth::HttpsSpiffe {
            endpoint_spiffe_id: endpoint_id.into(),
        },
    }
}

/// Server A federates with server B over https_spiffe: a new key in B's
/// bundle reaches A's datastore by itself; deleting the relationship
/// withdraws B's bundle.
#[tokio::test(flavor = "multi_thread")]
async fn a_federated_bundle_follows_its_endpoint_and_goes_with_its_relationship() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = start_td(b_dir.path(), partner(), true).await;
    let a = start_td(a_dir.path(), td(), false).await;
    let url = format!("https://{}/", b.federation_addr.unwrap());
    let b_bundle = b.server.own_bundle().await.unwrap();

    // https_spiffe without a bundle to authenticate the endpoint: refused.
    let err = a
        .server
        .create_federation(
            relationship(url.clone(), "spiffe://partner.test/signet/server"),
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a bundle of partner.test"), "{err}");
    a.server
        .create_federation(
            relationship(url.clone(), "spiffe://partner.test/signet/server"),
            Some(b_bundle.clone()),
        )
        .await
        .unwrap();

    // B gains a key (as when its CA prepares the next authority).
    let mut grown = b_bundle.clone();
    grown.add_x509_authority(TestCa::for_trust_domain("partner.test").der);
    grown.set_sequence(b_bundle.sequence() + 1);
    b.server.store().put_bundle(&grown).await.unwrap();
    let deadline = std::time::Instant::now() + signet_testkit::DEADLINE;
    loop {
        let held = a
            .server
            .store()
            .get_bundle(&partner())
            .await
            .unwrap()
            .unwrap();
        if held.same_keys(&grown) {
            assert_eq!(held.sequence(), grown.sequence());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B's new key never reached A"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    a.server.delete_federation(&partner()).await.unwrap();
    assert!(
        a.server
            .store()
            .get_bundle(&partner())
            .await
            .unwrap()
            .is_none()
    );
    assert!(a.server.list_federations().await.unwrap().is_empty());
}

/// Each bad answer is refused with its reason, and never becomes the
/// stored bundle (the fetch returns an error; nothing is stored).
#[tokio::test(flavor = "multi_thread")]
async fn bad_endpoints_and_bad_bundles_are_refused_with_their_reason() {
    let b_dir = tempfile::tempdir().unwrap();
    let b = start_td(b_dir.path(), partner(), true).await;
    let url = format!("https://{}/", b.federation_addr.unwrap());
    let b_bundle = b.server.own_bundle().await.unwrap();
    let good = relationship(url.clone(), "spiffe://partner.test/signet/server");
    assert!(
        refresh::fetch(&good, &partner(), Some(&b_bundle))
            .await
            .is_ok()
    );

    // The endpoint presents another SPIFFE ID than the relationship names.
    let wrong_id = relationship(url.clone(), "spiffe://partner.test/not-the-server");
    let err = refresh::fetch(&wrong_id, &partner(), Some(&b_bundle))
        .await
        .unwrap_err();
    assert!(matches!(err, refresh::FetchError::Tls(_)), "{err}");
    // Our stored bundle of partner.test does not vouch for the endpoint.
    let mut stranger = Bundle::new(partner());
    stranger.add_x509_authority(TestCa::for_trust_domain("partner.test").der);
    let err = refresh::fetch(&good, &partner(), Some(&stranger))
        .await
        .unwrap_err();
    assert!(matches!(err, refresh::FetchError::Tls(_)), "{err}");
    // The sequence goes backwards.
    let mut newer = b_bundle.clone();
    newer.set_sequence(b_bundle.sequence() + 100);
    let err = refresh::fetch(&good, &partner(), Some(&newer))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sequence went backwards"), "{err}");
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = relationship(
        format!("https://{}/", closed.local_addr().unwrap()),
        "spiffe://partner.test/signet/server",
    );
    drop(closed);
    let err = refresh::fetch(&gone, &partner(), Some(&b_bundle))
        .await
        .unwrap_err();
    assert!(matches!(err, refresh::FetchError::Connect(_)), "{err}");

    // The bundle itself: an authority of another trust domain, none at all.
    let mut foreign = Bundle::new(partner());
    foreign.add_x509_authority(TestCa::for_trust_domain("other.test").der);
    let err = refresh::check(&foreign, &partner(), None).unwrap_err();
    assert!(err.to_string().contains("authority of other.test"), "{err}");
    let err = refresh::check(&Bundle::new(partner()), &partner(), None).unwrap_err();
    assert!(matches!(err, refresh::FetchError::NoAuthorities), "{err}");
}
