//! Requests sent straight to the admin API over gRPC, past the CLI's own
//! checks: absurd TTLs get InvalidArgument, and the server keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use rcgen::PublicKeyData;
use signet_server::admin::connect_admin;
use signet_wire::admin::*;

#[tokio::test(flavor = "multi_thread")]
async fn huge_ttls_are_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let c = Combined::start(dir.path(), &[]);
    let mut admin = connect_admin(c.admin.clone().into()).await.unwrap();
    let key = rcgen::KeyPair::generate().unwrap();

    for ttl in [u64::MAX, u64::MAX / 2, 400 * 24 * 3600] {
        let x509 = admin
            .mint_x509_svid(MintX509SvidRequest {
                spiffe_id: "spiffe://example.org/huge".into(),
                public_key: key.subject_public_key_info(),
                ttl,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(x509.code(), tonic::Code::InvalidArgument, "{x509:?}");
        assert!(x509.message().contains("over the limit"), "{x509:?}");

        let jwt = admin
            .mint_jwt_svid(MintJwtSvidRequest {
                spiffe_id: "spiffe://example.org/huge".into(),
                audience: vec!["db".into()],
                ttl,
            })
            .await
            .unwrap_err();
        assert_eq!(jwt.code(), tonic::Code::InvalidArgument, "{jwt:?}");

        let token = admin
            .create_join_token(CreateJoinTokenRequest {
                ttl,
                agent_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(token.code(), tonic::Code::InvalidArgument, "{token:?}");
    }

    // Within the limit, a TTL beyond the CA's life is capped at it.
    let svid = admin
        .mint_x509_svid(MintX509SvidRequest {
            spiffe_id: "spiffe://example.org/long".into(),
            public_key: key.subject_public_key_info(),
            ttl: 300 * 24 * 3600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(svid.svid.is_some());
    let health = admin.health(HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(health.trust_domain, "example.org");
}
