"""Drives a Signet agent's Workload API from Python, as users of gRPC C-core
and of the SPIFFE Python library do. Run by tests/workload_api_interop.rs.

usage: workload_api_interop.py SOCKET SPIFFE_ID SECOND_SPIFFE_ID

1. grpcio directly, once per :authority form (C-core's default, the raw
   path as grpc-java sends it, the path percent-encoded, `localhost`): every
   Workload API method.
2. The SPIFFE Python library unchanged: X.509 fetch, bundles, JWT fetch and
   validate, JWT bundles, and an X.509 stream that must see the second
   identity pushed after it printed STREAMING (the test then adds it).

Prints one JSON object per step; any failure raises (non-zero exit).
"""

import json
import sys
import threading
import urllib.parse

import grpc
from spiffe import TrustDomain, WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc

TIMEOUT = 20
HEADER = (("workload.spiffe.io", "true"),)


def report(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def every_method(sock, authority):
    options = [] if authority is None else [("grpc.default_authority", authority)]
    with grpc.insecure_channel("unix:" + sock, options=options) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        stream = stub.FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=TIMEOUT
        )
        x509 = next(stream)
        stream.cancel()
        stream = stub.FetchX509Bundles(
            workload_pb2.X509BundlesRequest(), metadata=HEADER, timeout=TIMEOUT
        )
        bundles = next(stream)
        stream.cancel()
        jwt = stub.FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=["db"]),
            metadata=HEADER,
            timeout=TIMEOUT,
        )
        validated = stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="db", svid=jwt.svids[0].svid),
            metadata=HEADER,
            timeout=TIMEOUT,
        )
        stream = stub.FetchJWTBundles(
            workload_pb2.JWTBundlesRequest(), metadata=HEADER, timeout=TIMEOUT
        )
        jwt_bundles = next(stream)
        stream.cancel()
        # Without the required header the agent answers InvalidArgument:
        # the request reached the Workload API, not an HTTP/2 reset.
        try:
            stub.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["db"]), timeout=TIMEOUT
            )
            missing_header = "OK"
        except grpc.RpcError as e:
            missing_header = e.code().name
        return {
            "x509": [s.spiffe_id for s in x509.svids],
            "x509_key_bytes": len(x509.svids[0].x509_svid_key),
            "bundles": sorted(bundles.bundles.keys()),
            "jwt": jwt.svids[0].spiffe_id,
            "validated": validated.spiffe_id,
            "jwt_bundles": sorted(jwt_bundles.bundles.keys()),
            "missing_header": missing_header,
        }


def main():
    sock, spiffe_id, second_id = sys.argv[1:4]
    forms = {
        "default": None,
        "raw-path": sock,
        "percent-encoded": urllib.parse.quote(sock, safe=""),
        "localhost": "localhost",
    }
    for name, authority in forms.items():
        report("grpcio", authority=name, **every_method(sock, authority))

    client = WorkloadApiClient(socket_path="unix://" + sock)
    td = TrustDomain("example.org")
    svid = client.fetch_x509_svid(timeout=TIMEOUT)
    bundles = client.fetch_x509_bundles(timeout=TIMEOUT)
    jwt = client.fetch_jwt_svid(audience={"db"}, timeout=TIMEOUT)
    validated = client.validate_jwt_svid(jwt.token, "db", timeout=TIMEOUT)
    jwt_bundles = client.fetch_jwt_bundles(timeout=TIMEOUT)
    try:
        client.validate_jwt_svid(jwt.token, "other-audience", timeout=TIMEOUT)
        wrong_audience = "accepted"
    except Exception as e:  # the library wraps the gRPC error
        wrong_audience = type(e).__name__
    report(
        "spiffe",
        x509=str(svid.spiffe_id),
        chain=len(svid.cert_chain),
        bundle=bundles.get_bundle_for_trust_domain(td) is not None,
        jwt=str(jwt.spiffe_id),
        validated=str(validated.spiffe_id),
        jwt_bundle=jwt_bundles.get_bundle_for_trust_domain(td) is not None,
        wrong_audience=wrong_audience,
    )

    updates = []
    errors = []
    both = threading.Event()

    def on_success(ctx):
        ids = sorted(str(s.spiffe_id) for s in ctx.x509_svids)
        updates.append(ids)
        if len(updates) == 1:
            report("streaming", ids=ids)
        if second_id in ids:
            both.set()

    handle = client.stream_x509_contexts(
        on_success=on_success, on_error=errors.append, retry_connect=False
    )
    if not both.wait(TIMEOUT):
        raise SystemExit(f"no pushed update with {second_id}: {updates} {errors}")
    handle.cancel()
    report("stream", updates=updates[-1], count=len(updates))
    client.close()


if __name__ == "__main__":
    main()
