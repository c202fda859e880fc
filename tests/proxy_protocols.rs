//! The sidecar with what ghostunnel and Envoy users put behind and in front
//! of it: gRPC apps in HTTP mode (Python grpcio on both ends), Unix sockets
//! on every side, and the PROXY protocol to an app that reads it (nginx) and
//! from a load balancer in front.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const API: &str = "spiffe://example.org/ns/prod/sa/api";
const WEB: &str = "spiffe://example.org/ns/prod/sa/web";

/// `signet run` with this uid registered as API and as WEB (each sidecar
/// picks its own with `--svid-id`).
fn core_with_api_and_web(dir: &Path) -> Combined {
    let c = Combined::start(dir, &[]);
    c.entry_for_uid(API, uid());
    c.entry_for_uid(WEB, uid());
    c
}

/// An outbound as WEB to the API server listening on `port`.
fn outbound(c: &Combined, name: &str, port: u16) -> (Proc, u16) {
    let to = format!("127.0.0.1:{port}");
    c.sidecar(
        name,
        "outbound",
        &["--to", &to, "--svid-id", WEB, "--server-id", API],
    )
}

/// A sidecar whose listener is `listen` (a `unix:` path), ready once its
/// admin endpoint says so.
fn sidecar_on(c: &Combined, name: &str, mode: &str, listen: &str, args: &[&str]) -> Proc {
    let mut cmd = signet();
    cmd.args(["proxy", mode, "--listen", listen])
        .args(args)
        .args(["--agent-socket", &c.agent, "--admin-listen", "127.0.0.1:0"]);
    let mut p = Proc::spawn(name, cmd, &c.dir);
    let admin = p.reported_addr("admin endpoint:").port();
    eventually(&format!("{name} to be ready"), || {
        (curl(&format!("http://127.0.0.1:{admin}/ready")).0 == 200).then_some(())
    });
    p
}

fn python(name: &str, script: &str, args: &[&str], dir: &Path) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    Proc::spawn(name, cmd, dir)
}

/// A gRPC service without generated code (raw bytes in and out): Unary
/// answers with the caller's XFCC and a trailer, Stream sends three
/// messages, Secret must never be reached.
const GRPC_APP: &str = r#"
import grpc, sys
from concurrent import futures
def unary(req, ctx):
    md = dict(ctx.invocation_metadata())
    ctx.set_trailing_metadata((("x-echo-trailer", "kept"),))
    return b"unary " + req + b" xfcc=" + md.get("x-forwarded-client-cert", "-").encode()
def stream(req, ctx):
    for i in range(3):
        yield b"part %d of " % i + req
def secret(req, ctx):
    print("SECRET REACHED", flush=True)
    return b"secret"
handlers = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Stream": grpc.unary_stream_rpc_method_handler(stream),
    "Secret": grpc.unary_unary_rpc_method_handler(secret),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", handlers),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print("listening on 127.0.0.1:%d" % port, flush=True)
server.wait_for_termination()
"#;

/// Calls the three methods through `target` and prints what came back.
const GRPC_CLIENT: &str = r#"
import grpc, json, sys
out = {}
with grpc.insecure_channel(sys.argv[1]) as ch:
    def call(kind, method, req):
        try:
            if kind == "unary":
                resp, c = ch.unary_unary("/demo.Echo/" + method).with_call(req, timeout=10)
                return {"ok": resp.decode(), "trailers": dict(c.trailing_metadata() or ())}
            return {"ok": [m.decode() for m in ch.unary_stream("/demo.Echo/" + method)(req, timeout=10)]}
        except grpc.RpcError as e:
            return {"code": e.code().name, "details": e.details()}
    out["unary"] = call("unary", "Unary", b"hello")
    out["stream"] = call("stream", "Stream", b"hi")
    out["secret"] = call("unary", "Secret", b"x")
print(json.dumps(out))
"#;

const GRPC_POLICY: &str = r#"package signet.authz

import rego.v1

default allow := {"allowed": false, "reason": "only Unary and Stream are open"}

allow := {"allowed": true} if {
	input.attributes.request.http.path in {"/demo.Echo/Unary", "/demo.Echo/Stream"}
}
"#;

fn grpc_calls(target: &str) -> serde_json::Value {
    json_stdout(
        &Command::new("python3")
            .args(["-c", GRPC_CLIENT, target])
            .output()
            .unwrap(),
    )
}

#[test]
fn grpc_calls_pass_http_mode_and_denials_are_grpc_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let c = core_with_api_and_web(dir.path());
    let mut app = python("grpc-app", GRPC_APP, &[], dir.path());
    let app_port = app.reported_addr("listening on").port();
    let policy = dir.path().join("grpc.rego");
    std::fs::write(&policy, GRPC_POLICY).unwrap();
    let to_app = format!("127.0.0.1:{app_port}");
    let inbound = |name: &str, protocol: Option<&str>| {
        let mut args = vec![
            "--to",
            &to_app,
            "--svid-id",
            API,
            "--http",
            "--policy",
            policy.to_str().unwrap(),
        ];
        if let Some(p) = protocol {
            args.extend(["--app-protocol", p]);
        }
        c.sidecar(name, "inbound", &args)
    };

    // HTTP/2 to the app (auto: the caller speaks HTTP/2).
    let (_in_auto, in_auto) = inbound("inbound-auto", Some("auto"));
    let (_out_auto, out_auto) = outbound(&c, "outbound-auto", in_auto);
    let got = grpc_calls(&format!("127.0.0.1:{out_auto}"));
    let unary = got["unary"]["ok"].as_str().expect("unary call failed");
    assert!(unary.starts_with("unary hello xfcc=By="), "{got}");
    assert!(unary.contains(&format!("URI={WEB}")), "{got}");
    assert_eq!(got["unary"]["trailers"]["x-echo-trailer"], "kept", "{got}");
    assert_eq!(
        got["stream"]["ok"],
        serde_json::json!(["part 0 of hi", "part 1 of hi", "part 2 of hi"]),
        "{got}"
    );
    assert_eq!(got["secret"]["code"], "PERMISSION_DENIED", "{got}");
    assert_eq!(
        got["secret"]["details"],
        "access denied by policy: only Unary and Stream are open"
    );

    // --app-protocol http2 gives the same.
    let (_in_h2, in_h2) = inbound("inbound-h2", Some("http2"));
    let (_out_h2, out_h2) = outbound(&c, "outbound-h2", in_h2);
    let got = grpc_calls(&format!("127.0.0.1:{out_h2}"));
    assert!(got["unary"]["ok"].is_string(), "{got}");
    assert_eq!(got["stream"]["ok"].as_array().map(Vec::len), Some(3));

    // HTTP/1.1 to the app (the default) cannot carry gRPC: the caller is
    // told so as a gRPC status, not a 502.
    let (in_h1, in_h1_port) = inbound("inbound-h1", None);
    let (_out_h1, out_h1) = outbound(&c, "outbound-h1", in_h1_port);
    let got = grpc_calls(&format!("127.0.0.1:{out_h1}"));
    assert_eq!(got["unary"]["code"], "UNAVAILABLE", "{got}");
    assert!(
        got["unary"]["details"]
            .as_str()
            .unwrap()
            .contains("gRPC needs app_protocol http2 or auto"),
        "{got}"
    );
    assert!(in_h1.log_text().contains("--app-protocol http2"));
    assert!(!app.log_text().contains("SECRET REACHED"));

    // The app gone: UNAVAILABLE, as gRPC clients retry.
    app.signal_and_wait("KILL");
    let got = grpc_calls(&format!("127.0.0.1:{out_auto}"));
    assert_eq!(got["unary"]["code"], "UNAVAILABLE", "{got}");
}

/// An HTTP app on a Unix socket, answering with what it received.
const UNIX_APP: &str = r#"
import http.server, socketserver, sys, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("path=%s xfcc=%s\n" % (self.path, self.headers.get("x-forwarded-client-cert", "-"))).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def address_string(self): return "unix"
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
s = S(sys.argv[1], H)
print("listening on", sys.argv[1], flush=True)
s.serve_forever()
"#;

fn through_unix(socket: &Path, path: &str) -> (u16, String) {
    curl_with(&[
        "--unix-socket",
        socket.to_str().unwrap(),
        &format!("http://app{path}"),
    ])
}

#[test]
fn unix_sockets_on_every_side() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let c = core_with_api_and_web(dir.path());
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o755)).unwrap();
    let at = |name: &str| sockets.join(name);
    let unix = |name: &str| format!("unix:{}", at(name).display());

    let mut app = python(
        "unix-app",
        UNIX_APP,
        &[at("app.sock").to_str().unwrap()],
        dir.path(),
    );
    app.wait_for("listening on");

    // TCP mode: app -> unix outbound -> unix inbound -> unix app.
    let _in_tcp = sidecar_on(
        &c,
        "inbound-tcp-mode",
        "inbound",
        &unix("in.sock"),
        &[
            "--to",
            &unix("app.sock"),
            "--svid-id",
            API,
            "--allow-id",
            WEB,
        ],
    );
    // Outbounds on Unix sockets, to the inbound's.
    let to_in = unix("in.sock");
    let unix_outbound = |name: &str, extra: &[&str]| {
        let mut args = vec!["--to", &to_in, "--svid-id", WEB, "--server-id", API];
        args.extend(extra);
        sidecar_on(&c, name, "outbound", &unix(&format!("{name}.sock")), &args)
    };
    let _out = unix_outbound("out", &["--listen-mode", "0600"]);
    let (status, body) = through_unix(&at("out.sock"), "/over/unix");
    assert_eq!((status, body.as_str()), (200, "path=/over/unix xfcc=-\n"));
    // The default mode, and the one asked for.
    let mode = |name: &str| std::fs::metadata(at(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("in.sock"), 0o660);
    assert_eq!(mode("out.sock"), 0o600);

    // HTTP mode to a Unix-socket app, from a TCP listener.
    let (_in_http, in_http) = c.sidecar(
        "inbound-http-mode",
        "inbound",
        &[
            "--to",
            &unix("app.sock"),
            "--svid-id",
            API,
            "--allow-id",
            WEB,
            "--http",
        ],
    );
    let (_out_tcp, out_tcp) = outbound(&c, "outbound-tcp", in_http);
    let (status, body) = curl(&format!("http://127.0.0.1:{out_tcp}/to/unix/app"));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("path=/to/unix/app xfcc=By="), "{body}");
    assert!(body.contains(&format!("URI={WEB}")), "{body}");

    // Squatting rules as for the agent socket: a live socket is not taken
    // over, any other file is not replaced, a directory others may write
    // to is refused.
    let refused = |listen: &str, says: &str| {
        fails_saying(
            &[
                "proxy",
                "outbound",
                "--listen",
                listen,
                "--to",
                "127.0.0.1:1",
                "--server-id",
                API,
                "--agent-socket",
                &c.agent,
            ],
            says,
        )
    };
    refused(&unix("in.sock"), "another process is serving");
    std::fs::write(at("plain-file"), "data").unwrap();
    refused(
        &unix("plain-file"),
        "is not a socket; refusing to replace it",
    );
    assert_eq!(std::fs::read_to_string(at("plain-file")).unwrap(), "data");
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(
        &format!("unix:{}/x.sock", open_dir.display()),
        "other users may write to it",
    );
    refused("unix:relative.sock", "must be absolute");

    // The owner asked for (root only can give a socket away).
    if rustix_is_root() {
        let _owned = unix_outbound("owned", &["--listen-owner", "65534:65534"]);
        let m = std::fs::metadata(at("owned.sock")).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
    }

    // A stopped sidecar removes its socket; the app's stays.
    let mut stopped = unix_outbound("stopped", &[]);
    assert!(at("stopped.sock").exists());
    stopped.signal_and_wait("TERM");
    assert!(!at("stopped.sock").exists());
    assert!(at("app.sock").exists());
}

fn rustix_is_root() -> bool {
    uid() == 0
}

/// nginx answering with the client address it read from the PROXY protocol
/// header (and refusing connections without one).
fn start_nginx(dir: &Path) -> (Proc, u16) {
    let port = signet_testkit::ports::free_port();
    let root = dir.join("nginx");
    std::fs::create_dir_all(root.join("logs")).unwrap();
    let conf = root.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{
            default_type text/plain;
            return 200 "client=$proxy_protocol_addr:$proxy_protocol_port remote=$remote_addr\n";
        }}
    }}
}}
"#,
            root = root.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("nginx");
    cmd.args(["-p", root.to_str().unwrap(), "-c", conf.to_str().unwrap()]);
    let p = Proc::spawn("nginx", cmd, dir);
    eventually("nginx to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
    (p, port)
}

/// A load balancer in front of the inbound: sends `argv[2]` (a PROXY v1
/// header) then relays both ways to 127.0.0.1:`argv[1]`.
const LOAD_BALANCER: &str = r#"
import socket, sys, threading
target, header = int(sys.argv[1]), sys.argv[2].encode() + b"\r\n"
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(16)
print("listening on 127.0.0.1:%d" % ls.getsockname()[1], flush=True)
def pipe(a, b):
    try:
        while (data := a.recv(65536)):
            b.sendall(data)
    except OSError:
        pass
    finally:
        try: b.shutdown(socket.SHUT_WR)
        except OSError: pass
while True:
    c, _ = ls.accept()
    u = socket.create_connection(("127.0.0.1", target))
    u.sendall(header)
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"#;

/// A connection policy letting in callers from 203.0.113.0/24 only.
const SOURCE_POLICY: &str = r#"package signet.authz

import rego.v1

default allow := false

allow if net.cidr_contains("203.0.113.0/24", input.attributes.source.address.socketAddress.address)
"#;

#[test]
fn proxy_protocol_to_the_app_and_from_a_load_balancer() {
    let dir = tempfile::tempdir().unwrap();
    let c = core_with_api_and_web(dir.path());
    let (_nginx, nginx) = start_nginx(dir.path());
    let to_nginx = format!("127.0.0.1:{nginx}");

    // v1 to the app: nginx sees the outbound sidecar's address as the
    // client, not the inbound's own connection.
    let (_in_v1, in_v1) = c.sidecar(
        "inbound-v1",
        "inbound",
        &[
            "--to",
            &to_nginx,
            "--svid-id",
            API,
            "--allow-id",
            WEB,
            "--proxy-protocol-to-app",
            "v1",
        ],
    );
    let (_o1, o1) = outbound(&c, "outbound-v1", in_v1);
    let (status, body) = curl(&format!("http://127.0.0.1:{o1}/"));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("client=127.0.0.1:"), "{body}");
    let port: u16 = body["client=127.0.0.1:".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(port != 0 && port != in_v1 && port != nginx, "{body}");

    // Behind a load balancer: the inbound takes the caller from the LB's
    // header (for the policy too) and sends it on to nginx in v2.
    let policy = dir.path().join("source.rego");
    std::fs::write(&policy, SOURCE_POLICY).unwrap();
    let (in_lb, in_lb_port) = c.sidecar(
        "inbound-lb",
        "inbound",
        &[
            "--to",
            &to_nginx,
            "--svid-id",
            API,
            "--policy",
            policy.to_str().unwrap(),
            "--accept-proxy-protocol",
            "--proxy-protocol-to-app",
            "v2",
        ],
    );
    let lb = |name: &str, header: &str| {
        let mut p = python(
            name,
            LOAD_BALANCER,
            &[&in_lb_port.to_string(), header],
            dir.path(),
        );
        let port = p.reported_addr("listening on").port();
        (p, port)
    };
    let (_lb_ok, lb_ok) = lb("lb-allowed", "PROXY TCP4 203.0.113.9 10.0.0.1 40000 443");
    let (_o2, o2) = outbound(&c, "outbound-via-lb", lb_ok);
    let (status, body) = curl(&format!("http://127.0.0.1:{o2}/"));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("client=203.0.113.9:40000 "), "{body}");

    // A caller the policy does not let in, by the address the LB names.
    let (_lb_no, lb_no) = lb("lb-denied", "PROXY TCP4 198.51.100.1 10.0.0.1 40001 443");
    let (_o3, o3) = outbound(&c, "outbound-denied", lb_no);
    assert_ne!(curl(&format!("http://127.0.0.1:{o3}/")).0, 200);
    eventually("the denial in the inbound's log", || {
        in_lb
            .log_text()
            .contains("connection rejected: policy denied")
            .then_some(())
    });

    // Straight to the listener, without a header: refused, saying why.
    let (_o4, o4) = outbound(&c, "outbound-direct", in_lb_port);
    assert_ne!(curl(&format!("http://127.0.0.1:{o4}/")).0, 200);
    eventually("the refusal in the inbound's log", || {
        let log = in_lb.log_text();
        (log.contains("connection rejected: PROXY protocol")
            && log.contains("no PROXY protocol header"))
        .then_some(())
    });
}

#[test]
fn protocol_flags_are_checked() {
    for (args, says) in [
        (
            vec![
                "inbound",
                "--to",
                "127.0.0.1:1",
                "--allow-id",
                API,
                "--app-protocol",
                "http2",
            ],
            "--http",
        ),
        (
            vec![
                "inbound",
                "--to",
                "127.0.0.1:1",
                "--allow-id",
                API,
                "--http",
                "--proxy-protocol-to-app",
                "v1",
            ],
            "cannot be used with",
        ),
        (
            vec![
                "inbound",
                "--to",
                "127.0.0.1:1",
                "--allow-id",
                API,
                "--listen-mode",
                "0600",
            ],
            "listen_mode and listen_owner are for a unix: listen address",
        ),
        (
            vec![
                "outbound",
                "--to",
                "127.0.0.1:1",
                "--server-id",
                API,
                "--listen-owner",
                "no-such-user-here",
            ],
            "no user named",
        ),
    ] {
        let mut all = vec!["proxy"];
        let (mode, rest) = args.split_first().unwrap();
        all.push(mode);
        all.extend(["--listen", "127.0.0.1:0"]);
        all.extend(rest);
        fails_saying(&all, says);
    }
}
