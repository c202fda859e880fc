//! Plain HTTP and TLS probes of what a test started: curl for requests a
//! user would make, openssl for the certificate a listener presents, and a
//! bare HTTP/1.1 GET for admin endpoints.

use std::process::Command;

/// `GET url` with curl: (status, body); status 0 if nothing answered.
pub fn curl(url: &str) -> (u16, String) {
    curl_with(&[url])
}

/// curl with extra arguments (the URL among them): (status, body).
pub fn curl_with(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The body of `GET path` from a loopback port, without curl's process
/// per call ("" on failure; a chunked body keeps its chunk sizes): for
/// polling admin endpoints in a loop.
pub fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The serial (lowercase hex, no leading zeros) of the certificate a TLS
/// server on `port` presents to a new connection (read by openssl
/// s_client; the handshake may then fail for want of a client certificate).
pub fn presented_serial(port: u16) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().strip_prefix("serial=")?.to_ascii_lowercase();
    Some(hex.trim_start_matches('0').to_owned())
}
