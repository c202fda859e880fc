//! StreamSecrets protocol rules against a real agent: a NACKed version is
//! not sent again; the next change is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use signet_sds::SECRET_TYPE_URL;

async fn next(stream: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("a response in time")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nacked_version_is_not_resent_and_the_next_change_is() {
    let setup = signet_harness::start().await;
    let channel = signet_workload::channel(setup.sock.clone()).await.unwrap();
    let mut client = SecretDiscoveryServiceClient::new(channel);
    let req = DiscoveryRequest {
        resource_names: vec![
            "default".into(),
            "ROOTCA".into(),
            "spiffe://example.org/unknown".into(),
        ],
        type_url: SECRET_TYPE_URL.into(),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(req.clone()).await.unwrap();
    let mut stream = client
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await;
    assert_eq!(first.type_url, SECRET_TYPE_URL);
    assert_eq!(first.resources.len(), 2, "the unknown name is left out");

    // NACK it.
    let mut nack = req.clone();
    nack.response_nonce = first.nonce.clone();
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "bad secret".into(),
        details: vec![],
    });
    tx.send(nack).await.unwrap();
    // A change that produces a new version is sent; the rejected one was not
    // sent again in between (the next message carries a different version).
    let mut changed = setup.entry.clone();
    changed.dns_names = vec!["envoy.example.org".into()];
    setup.server.update_entry(changed).await.unwrap();
    let second = next(&mut stream).await;
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
}
