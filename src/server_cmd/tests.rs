use super::*;

#[test]
fn every_problem_is_reported() {
    let s = ServerSettings {
        trust_domain: Some("Bad.Domain".into()),
        ca_ttl: Some("forever".into()),
        ca_key_type: Some("dsa".into()),
        upstream_cert: Some("x.pem".into()),
        ..Default::default()
    };
    let err = s.resolve().unwrap_err().to_string();
    for want in [
        "trust_domain",
        "ca_ttl \"forever\"",
        "ca_key_type",
        "upstream_cert and upstream_key",
    ] {
        assert!(err.contains(want), "{want} missing from: {err}");
    }
}

#[test]
fn the_federation_table_and_its_flags_make_the_bundle_endpoint() {
    use signet_server::federation::EndpointProfile;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    std::fs::write(
        &path,
        "[federation]\nlisten = \"127.0.0.1:8443\"\nrefresh_hint = \"1m\"\n",
    )
    .unwrap();
    let s = ServerSettings {
        config: Some(path.clone()),
        federation: FederationSettings::listening_on("127.0.0.1:9443"),
        ..Default::default()
    };
    let endpoint = s.resolve().unwrap().run.federation.unwrap();
    assert_eq!(
        endpoint.listen.to_string(),
        "127.0.0.1:9443",
        "the flag wins"
    );
    assert_eq!(endpoint.refresh_hint, std::time::Duration::from_secs(60));
    assert_eq!(endpoint.profile, EndpointProfile::HttpsSpiffe);

    std::fs::write(
        &path,
        "[federation]\nlisten = \"nowhere\"\nweb_cert = \"c.pem\"\nrefresh_hint = \"0s\"\n",
    )
    .unwrap();
    let err = ServerSettings {
        config: Some(path.clone()),
        ..Default::default()
    }
    .resolve()
    .unwrap_err()
    .to_string();
    for want in [
        "federation.listen \"nowhere\"",
        "web_cert and web_key go together",
        "refresh_hint must be longer than zero",
    ] {
        assert!(err.contains(want), "{want} missing from: {err}");
    }
    std::fs::write(&path, "[federation]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let err = ServerSettings {
        config: Some(path),
        ..Default::default()
    }
    .resolve()
    .unwrap_err();
    assert!(format!("{err:#}").contains("lisen"), "{err:#}");
}

#[test]
fn flags_override_the_file_and_unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    std::fs::write(
        &path,
        "trust_domain = \"file.org\"\nx509_svid_ttl = \"30m\"\n",
    )
    .unwrap();
    let s = ServerSettings {
        config: Some(path.clone()),
        x509_svid_ttl: Some("10m".into()),
        ..Default::default()
    };
    let r = s.resolve().unwrap();
    assert_eq!(r.run.server.trust_domain().as_str(), "file.org");
    assert_eq!(
        r.run.server.ca.x509_svid_ttl,
        std::time::Duration::from_secs(600)
    );
    std::fs::write(&path, "trust_domian = \"typo.org\"\n").unwrap();
    let err = ServerSettings {
        config: Some(path),
        ..Default::default()
    }
    .resolve()
    .unwrap_err();
    assert!(format!("{err:#}").contains("trust_domian"), "{err:#}");
}
