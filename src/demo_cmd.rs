//! `signet demo`: the whole mission on loopback in one command. Starts the
//! combined core, registers two workloads by kernel facts (this user's uid
//! and the path of each sidecar's binary), puts a legacy HTTP app behind an
//! inbound sidecar with a Rego policy, calls it through an outbound sidecar,
//! prints identities, decisions and latencies, and cleans up.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const TD: &str = "example.org";
const FRONTEND: &str = "spiffe://example.org/demo/frontend";
const BACKEND: &str = "spiffe://example.org/demo/backend";
const DEADLINE: Duration = Duration::from_secs(30);

/// The demo's policy: the frontend may read /hello; everything else is
/// denied with a reason the caller sees.
const POLICY: &str = r#"package demo

import rego.v1

default allow := {"allowed": false, "http_status": 403, "body": "denied by policy: only GET /hello is allowed for the frontend\n"}

allow := {"allowed": true} if {
	input.spiffe.peer_id == "spiffe://example.org/demo/frontend"
	input.attributes.request.http.method == "GET"
	input.parsed_path == ["hello"]
}
"#;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the demo's directory (data, sockets, logs, policy) afterwards.
    #[arg(long)]
    keep: bool,
}

/// Children ended (TERM, then KILL) and the directory removed on drop.
struct Demo {
    dir: PathBuf,
    keep: bool,
    children: Vec<(String, Child)>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for (_, child) in self.children.iter_mut().rev() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A child's stdout, line by line: what it reports (its ports).
struct Reports(mpsc::Receiver<String>);

impl Demo {
    fn spawn(&mut self, name: &str, exe: &Path, args: &[&str]) -> anyhow::Result<Reports> {
        use std::io::BufRead;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut child = Command::new(exe)
            .args(args)
            .env("SIGNET_LOG", "info")
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        // Read to the end, so the child never writes into a closed pipe.
        let stdout = child.stdout.take().context("the child's stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        self.children.push((name.to_string(), child));
        Ok(Reports(rx))
    }

    /// The address a child prints after `prefix` on a line of its stdout
    /// (the sidecars bind port 0 and say which port they got).
    fn reported_addr(&mut self, reports: &Reports, prefix: &str) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.check_alive()?;
            if let Ok(line) = reports.0.recv_timeout(Duration::from_millis(50))
                && let Some(rest) = line.trim().strip_prefix(prefix)
            {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                return addr
                    .parse()
                    .with_context(|| format!("{prefix} {addr:?} is not an address"));
            }
            if Instant::now() > deadline {
                bail!("no {prefix:?} line within {DEADLINE:?}");
            }
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Fails with the child's log if it has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for i in 0..self.children.len() {
            if let Some(status) = self.children[i].1.try_wait()? {
                let name = self.children[i].0.clone();
                bail!("{name} exited ({status}); its log:\n{}", self.log(&name));
            }
        }
        Ok(())
    }
}

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    method: &str,
    url: &str,
) -> anyhow::Result<(u16, String, Duration)> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .body(Empty::new())?;
    let started = Instant::now();
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((
        status,
        String::from_utf8_lossy(&body).into_owned(),
        started.elapsed(),
    ))
}

/// The legacy app: plain HTTP, knows nothing about SPIFFE, and greets the
/// caller named in the header its sidecar adds.
async fn legacy_app(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let caller = req
                        .headers()
                        .get("x-forwarded-client-cert")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split(';').find_map(|p| p.strip_prefix("URI=")))
                        .unwrap_or("an unknown caller")
                        .to_string();
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                        "hello {caller}, from a legacy app that speaks plain HTTP\n"
                    )))))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn wait_ready(
    demo: &mut Demo,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    admin: SocketAddr,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        demo.check_alive()?;
        if let Ok((200, body, _)) = get(client, "GET", &format!("http://{admin}/ready")).await {
            return Ok(body.trim().trim_start_matches("ready: ").to_string());
        }
        if Instant::now() > deadline {
            bail!("a sidecar was not ready within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the signet binary")?;
    let dir = std::env::temp_dir().join(format!("signet-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bin"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut demo = Demo {
        dir: dir.clone(),
        keep: args.keep,
        children: Vec::new(),
    };
    let admin_sock = dir.join("admin.sock").display().to_string();
    let agent_sock = dir.join("agent.sock").display().to_string();

    println!(
        "1. Starting the combined server and agent (trust domain {TD}, SQLite, self-signed CA)"
    );
    demo.spawn(
        "signet-run",
        &exe,
        &[
            "run",
            "--data-dir",
            &dir.join("data").display().to_string(),
            "--admin-socket",
            &admin_sock,
            "--agent-socket",
            &agent_sock,
            "--bind-address",
            "127.0.0.1:0",
        ],
    )?;
    let deadline = Instant::now() + DEADLINE;
    while !(Path::new(&admin_sock).exists() && Path::new(&agent_sock).exists()) {
        demo.check_alive()?;
        if Instant::now() > deadline {
            bail!("signet run did not create its sockets within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Each sidecar runs from its own copy of the binary: the agent tells
    // them apart by /proc/<pid>/exe, as it would two different programs.
    let uid = nix::unistd::getuid().as_raw();
    let frontend_bin = dir.join("bin/frontend-sidecar");
    let backend_bin = dir.join("bin/backend-sidecar");
    for bin in [&frontend_bin, &backend_bin] {
        std::fs::copy(&exe, bin)
            .with_context(|| format!("cannot copy signet to {}", bin.display()))?;
    }
    println!("2. Registering two workloads by kernel facts (uid {uid} and the binary path)");
    for (id, bin) in [(FRONTEND, &frontend_bin), (BACKEND, &backend_bin)] {
        let out = Command::new(&exe)
            .args(["entry", "create", "--spiffe-id", id, "--selector"])
            .arg(format!("unix:uid:{uid}"))
            .arg("--selector")
            .arg(format!("unix:path:{}", bin.display()))
            .args(["--admin-socket", &admin_sock])
            .output()?;
        if !out.status.success() {
            bail!(
                "entry create {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!("   {id}  <=  unix:uid:{uid} + unix:path:{}", bin.display());
    }

    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app_addr: SocketAddr = app.local_addr()?;
    let app_task = tokio::spawn(legacy_app(app));
    let policy = dir.join("policy.rego");
    std::fs::write(&policy, POLICY)?;
    // The sidecars bind port 0 and print the ports they got.
    let backend_says = demo.spawn(
        "backend-sidecar",
        &backend_bin,
        &[
            "proxy",
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &app_addr.to_string(),
            "--http",
            "--policy",
            &policy.display().to_string(),
            "--entrypoint",
            "demo/allow",
            "--agent-socket",
            &agent_sock,
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )?;
    let inbound = demo.reported_addr(&backend_says, "listener inbound:")?;
    let in_admin = demo.reported_addr(&backend_says, "admin endpoint:")?;
    println!(
        "3. A legacy HTTP app on {app_addr}, behind an inbound sidecar on {inbound} with {}",
        policy.display()
    );
    let frontend_says = demo.spawn(
        "frontend-sidecar",
        &frontend_bin,
        &[
            "proxy",
            "outbound",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &inbound.to_string(),
            "--server-id",
            BACKEND,
            "--agent-socket",
            &agent_sock,
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )?;
    let outbound = demo.reported_addr(&frontend_says, "listener outbound:")?;
    let out_admin = demo.reported_addr(&frontend_says, "admin endpoint:")?;
    println!(
        "4. A client behind an outbound sidecar on {outbound} (it calls the backend over mTLS)"
    );
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let backend = wait_ready(&mut demo, &client, in_admin).await?;
    let frontend = wait_ready(&mut demo, &client, out_admin).await?;
    println!("   backend sidecar  {backend}");
    println!("   frontend sidecar {frontend}");

    println!("5. Requests from the client, plain HTTP to its sidecar:");
    let hello = format!("http://{outbound}/hello");
    let (status, body, first) = get(&client, "GET", &hello).await?;
    println!(
        "   GET /hello     -> {status} ({:.2} ms, new mTLS connection)  {}",
        ms(first),
        body.trim()
    );
    if status != 200 {
        bail!(
            "the allowed request failed ({status}); backend log:\n{}",
            demo.log("backend-sidecar")
        );
    }
    let mut times = Vec::new();
    for _ in 0..200 {
        let (status, _, t) = get(&client, "GET", &hello).await?;
        if status != 200 {
            bail!("an allowed request failed ({status})");
        }
        times.push(t);
    }
    times.sort();
    println!(
        "   200 more GET /hello over keep-alive: p50 {:.2} ms, p99 {:.2} ms (client -> sidecar -> mTLS -> sidecar + policy -> app)",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 99 / 100])
    );
    let (status, body, t) = get(&client, "DELETE", &hello).await?;
    println!(
        "   DELETE /hello  -> {status} ({:.2} ms)  {}",
        ms(t),
        body.trim()
    );
    if status != 403 {
        bail!("the policy should have denied DELETE /hello, got {status}");
    }
    let decisions = demo
        .log("backend-sidecar")
        .lines()
        .filter(|l| l.contains("policy decision"))
        .count();
    println!(
        "6. The backend sidecar logged {decisions} policy decisions (audit events) in {}",
        dir.join("backend-sidecar.log").display()
    );

    app_task.abort();
    let keep = demo.keep;
    drop(demo);
    if keep {
        println!("Done. Logs, data and policy kept in {}", dir.display());
    } else {
        println!(
            "Done. Everything the demo started has stopped; its directory is removed (--keep keeps it)."
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
