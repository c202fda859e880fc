//! Generates the gRPC code of Signet's server APIs from `proto/` with protox
//! (a pure-Rust protobuf compiler: no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/signet/types.proto",
        "proto/signet/node.proto",
        "proto/signet/admin.proto",
        "proto/signet/downstream.proto",
        "proto/workload.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
