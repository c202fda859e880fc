//! End-to-end: the agent socket serves gRPC clients of other ecosystems,
//! whatever `:authority` they send (SECURITY.md invariant 10). Python
//! `grpcio` (gRPC C-core) with each authority form and the SPIFFE Python
//! library unchanged; and a raw HTTP/2 client that splits the authority
//! across CONTINUATION frames and later sends it as an indexed HPACK field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const FIRST: &str = "spiffe://example.org/python";
const SECOND: &str = "spiffe://example.org/python-two";

fn start_with_identity(dir: &Path) -> Combined {
    let c = Combined::start(dir, &[]);
    c.entry_for_uid(FIRST, uid());
    eventually("an SVID for this process", || {
        c.api(&["fetch", "x509"]).status.success().then_some(())
    });
    c
}

#[test]
fn python_grpcio_and_the_spiffe_library_work_with_every_authority_form() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start_with_identity(tmp.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/workload_api_interop.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).args([&c.agent, FIRST, SECOND]);
    let mut py = Proc::spawn("python", cmd, tmp.path());

    py.wait_for(r#""step": "streaming""#);
    c.entry_for_uid(SECOND, uid());
    py.wait_for(r#""step": "stream""#);
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = py.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the Python client did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "python failed:\n{}", py.log_text());
    py.child = None;

    let steps: Vec<Value> = py
        .seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let grpcio: Vec<&Value> = steps.iter().filter(|s| s["step"] == "grpcio").collect();
    let forms: Vec<&str> = grpcio
        .iter()
        .map(|s| s["authority"].as_str().unwrap())
        .collect();
    assert_eq!(
        forms,
        ["default", "raw-path", "percent-encoded", "localhost"]
    );
    for s in grpcio {
        assert_eq!(s["x509"], serde_json::json!([FIRST]), "{s}");
        assert!(s["x509_key_bytes"].as_u64().unwrap() > 100, "{s}");
        assert_eq!(
            s["bundles"],
            serde_json::json!(["spiffe://example.org"]),
            "{s}"
        );
        assert_eq!(s["jwt"], FIRST, "{s}");
        assert_eq!(s["validated"], FIRST, "{s}");
        assert_eq!(
            s["jwt_bundles"],
            serde_json::json!(["spiffe://example.org"]),
            "{s}"
        );
        assert_eq!(s["missing_header"], "INVALID_ARGUMENT", "{s}");
    }
    let lib = steps.iter().find(|s| s["step"] == "spiffe").unwrap();
    assert_eq!(lib["x509"], FIRST);
    assert_eq!(lib["chain"], 1);
    assert_eq!(lib["bundle"], true);
    assert_eq!(lib["jwt"], FIRST);
    assert_eq!(lib["validated"], FIRST);
    assert_eq!(lib["jwt_bundle"], true);
    assert_ne!(lib["wrong_audience"], "accepted");
    let stream = steps.iter().find(|s| s["step"] == "stream").unwrap();
    assert_eq!(stream["updates"], serde_json::json!([FIRST, SECOND]));
}

// --- a raw HTTP/2 client ---------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out).unwrap();
    out.extend_from_slice(s);
}

/// A literal field without indexing, new name.
fn literal(name: &str, value: &str, out: &mut Vec<u8>) {
    out.push(0x00);
    string(name.as_bytes(), out);
    string(value.as_bytes(), out);
}

/// The rest of a FetchJWTSVID request block, after its authority.
fn fetch_jwt_headers(out: &mut Vec<u8>) {
    out.extend([0x83, 0x86]); // :method POST, :scheme http
    literal(":path", "/SpiffeWorkloadAPI/FetchJWTSVID", out);
    literal("content-type", "application/grpc", out);
    literal("te", "trailers", out);
    literal("workload.spiffe.io", "true", out);
}

/// A gRPC-framed JWTSVIDRequest { audience: ["db"] }.
fn fetch_jwt_body() -> Vec<u8> {
    let msg = [0x0a, 0x02, b'd', b'b'];
    let mut body = vec![0, 0, 0, 0, msg.len() as u8];
    body.extend(msg);
    body
}

/// What the server answered on one stream.
#[derive(Debug, Default)]
struct Answer {
    headers: Vec<(String, String)>,
    data: Vec<u8>,
    reset: Option<u32>,
    done: bool,
}

struct RawClient {
    sock: UnixStream,
    decoder: loona_hpack::Decoder<'static>,
    pending: Vec<u8>,
}

impl RawClient {
    fn connect(path: &str) -> RawClient {
        let mut sock = UnixStream::connect(path).unwrap();
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        sock.write_all(PREFACE).unwrap();
        sock.write_all(&frame(0x4, 0, 0, &[])).unwrap();
        RawClient {
            sock,
            decoder: loona_hpack::Decoder::new(),
            pending: Vec::new(),
        }
    }

    fn read_frame(&mut self) -> (u8, u8, u32, Vec<u8>) {
        let mut header = [0u8; 9];
        self.sock
            .read_exact(&mut header)
            .expect("a frame from the agent");
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        self.sock.read_exact(&mut payload).unwrap();
        let stream = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
        (header[3], header[4], stream, payload)
    }

    /// Reads until `stream` ends (trailers with END_STREAM, or a reset),
    /// acknowledging SETTINGS and decoding every header block in order.
    fn answer(&mut self, stream: u32) -> Answer {
        let mut answer = Answer::default();
        while !answer.done {
            let (kind, flags, id, payload) = self.read_frame();
            match kind {
                0x4 if flags & 0x1 == 0 => self.sock.write_all(&frame(0x4, 0x1, 0, &[])).unwrap(),
                0x7 => panic!("GOAWAY from the agent: {payload:?}"),
                0x3 if id == stream => {
                    answer.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                    answer.done = true;
                }
                0x1 | 0x9 => {
                    self.pending.extend_from_slice(&payload);
                    if flags & 0x4 != 0 {
                        let block = std::mem::take(&mut self.pending);
                        let fields = self.decoder.decode(&block).unwrap();
                        if id == stream {
                            answer.headers.extend(fields.into_iter().map(|(n, v)| {
                                (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                            }));
                        }
                    }
                    if id == stream && flags & 0x1 != 0 {
                        answer.done = true;
                    }
                }
                0x0 if id == stream => {
                    answer.data.extend_from_slice(&payload);
                    answer.done = flags & 0x1 != 0;
                }
                _ => {}
            }
        }
        answer
    }
}

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_raw_http2_client_splits_and_indexes_the_authority() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start_with_identity(tmp.path());
    let mut client = RawClient::connect(&c.agent);

    // Stream 1: the raw socket path as :authority, a literal with
    // incremental indexing (static name 1), so it becomes dynamic entry 62
    // of the client's table; the block is cut inside the authority's value
    // and sent as HEADERS + two CONTINUATION frames.
    let mut block = vec![0x41];
    string(c.agent.as_bytes(), &mut block);
    fetch_jwt_headers(&mut block);
    let (a, rest) = block.split_at(5);
    let (b, rest) = rest.split_at(7);
    let mut bytes = frame(0x1, 0x0, 1, a);
    bytes.extend(frame(0x9, 0x0, 1, b));
    bytes.extend(frame(0x9, 0x4, 1, rest));
    bytes.extend(frame(0x0, 0x1, 1, &fetch_jwt_body()));
    client.sock.write_all(&bytes).unwrap();
    let first = client.answer(1);
    assert_eq!(first.reset, None, "stream 1 reset: {first:?}");
    assert_eq!(header(&first, ":status"), Some("200"), "{first:?}");
    assert_eq!(header(&first, "grpc-status"), Some("0"), "{first:?}");
    let text = String::from_utf8_lossy(&first.data);
    assert!(text.contains(FIRST) && text.contains("eyJ"), "{text}");

    // Stream 3: the same authority by its dynamic table index only.
    let mut block = vec![0x80 | 62];
    fetch_jwt_headers(&mut block);
    let mut bytes = frame(0x1, 0x4, 3, &block);
    bytes.extend(frame(0x0, 0x1, 3, &fetch_jwt_body()));
    client.sock.write_all(&bytes).unwrap();
    let second = client.answer(3);
    assert_eq!(second.reset, None, "stream 3 reset: {second:?}");
    assert_eq!(header(&second, "grpc-status"), Some("0"), "{second:?}");
    assert!(String::from_utf8_lossy(&second.data).contains(FIRST));

    // And the admin socket, the same way (a percent-encoded authority).
    let mut admin = RawClient::connect(&c.admin);
    let mut block = vec![0x41];
    let encoded = c.admin.replace('/', "%2F");
    string(encoded.as_bytes(), &mut block);
    block.extend([0x83, 0x86]);
    literal(":path", "/signet.admin.Admin/Health", &mut block);
    literal("content-type", "application/grpc", &mut block);
    literal("te", "trailers", &mut block);
    let mut bytes = frame(0x1, 0x4, 1, &block);
    bytes.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
    admin.sock.write_all(&bytes).unwrap();
    let health = admin.answer(1);
    assert_eq!(health.reset, None, "{health:?}");
    assert_eq!(header(&health, "grpc-status"), Some("0"), "{health:?}");
    assert!(String::from_utf8_lossy(&health.data).contains("example.org"));
}
