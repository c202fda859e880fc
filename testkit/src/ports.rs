//! Free loopback ports, shared by the end-to-end tests and the sidecar bench.

/// A loopback port nothing listens on now, never one this process was
/// given before (the kernel may hand the same free port to two binds in a
/// row, and two listeners of one test would then collide).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}
