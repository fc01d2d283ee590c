//! Connections that send nothing, stall mid-request or come by the thousand: each is closed
//! at its deadline or refused at a cap with a SPEC §6 answer, and the server keeps serving
//! `/healthz` and other clients throughout.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn addr(server: &Server) -> SocketAddr {
    server.base.trim_start_matches("http://").parse().unwrap()
}

/// Waits for the server to close `conn`; returns what it sent first and how long it took.
fn until_closed(mut conn: TcpStream, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    conn.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

/// The JSON body of a raw HTTP/1.1 response.
fn body_of(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// A client bound to `ip` (another loopback address is another peer).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `GET url`, retried while the connection is closed unanswered: at a cap, refused
/// connections are answered a few dozen at a time, each given a second, and the rest closed.
async fn answered(client: &reqwest::Client, url: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.get(url).send().await {
            Ok(resp) => return resp,
            Err(e) if Instant::now() < deadline => {
                eprintln!("unanswered, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("never answered: {e}"),
        }
    }
}

#[tokio::test]
async fn silent_and_stalled_connections_are_closed_at_their_deadlines() {
    let db = TestDb::sqlite();
    let server = Server::start(
        &db.url,
        &[
            ("TOLLGATE__SERVER__FIRST_BYTE_TIMEOUT_SECONDS", "1"),
            ("TOLLGATE__SERVER__HEADER_TIMEOUT_SECONDS", "1"),
            ("TOLLGATE__SERVER__BODY_READ_TIMEOUT_SECONDS", "1"),
        ],
    );
    let key = account(&db.url, "stall@example.com", None);
    let at = addr(&server);
    let within = Duration::from_secs(5);

    // Never a byte.
    let (sent, took) = until_closed(TcpStream::connect(at).unwrap(), within);
    assert!(
        sent.is_empty() && took < Duration::from_millis(2_500),
        "{took:?} {sent}"
    );

    // Half a request head.
    let mut conn = TcpStream::connect(at).unwrap();
    conn.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (_, took) = until_closed(conn, within);
    assert!(took < Duration::from_millis(2_500), "{took:?}");

    // A body that stops: declared, and chunked.
    let head = |framing: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
        )
    };
    for (framing, part) in [
        (
            "Content-Length: 100000",
            "{\"model\": \"tollgate/demo-chat\",",
        ),
        (
            "Transfer-Encoding: chunked",
            "10\r\n{\"model\": \"tollg\r\n",
        ),
    ] {
        let mut conn = TcpStream::connect(at).unwrap();
        conn.write_all(head(framing).as_bytes()).unwrap();
        conn.write_all(part.as_bytes()).unwrap();
        let (sent, took) = until_closed(conn, within);
        assert!(took < Duration::from_millis(2_500), "{framing}: {took:?}");
        assert!(sent.starts_with("HTTP/1.1 408"), "{framing}: {sent}");
        let body = body_of(&sent);
        assert_eq!(body["error"]["code"], "request_timeout", "{body}");
        assert_eq!(body["path"], "/v1/chat/completions", "{body}");
    }
    // The server is fine.
    let ok = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

/// 1,500 silent sockets from one address against a server started with 512 descriptors:
/// past the per-peer cap they are closed at once (after a second's chance to ask), and
/// `/healthz` and other peers are served all along; the server never runs out of
/// descriptors. (The admitted silent ones close at their first-byte deadline, as the test
/// above shows; here it is long, so they keep the peer at its cap.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_silent_sockets_leave_the_server_answering() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let db = TestDb::sqlite();
    let server = Server::start_after(
        "ulimit -n 512 && export TOLLGATE__SERVER__MAX_CONNECTIONS_PER_PEER=100 TOLLGATE__SERVER__FIRST_BYTE_TIMEOUT_SECONDS=60",
        &db.url,
    );
    let at = addr(&server);
    let silent: Vec<TcpStream> = (0..1_500)
        .map(|_| TcpStream::connect(at).expect("connect"))
        .collect();
    // Other peers (another loopback address) are served while the caps bite.
    let other = client_from("127.0.0.2");
    for _ in 0..5 {
        let started = Instant::now();
        let resp = other.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(2));
        let resp = other.get(server.url("/v1/models")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    // The crowded peer is told why, in the SPEC §6 shape (once the refused silent sockets
    // have given up their answer slots, within a second), and its liveness check works.
    let crowded = client_from("127.0.0.1");
    let resp = answered(&crowded, &server.url("/v1/models")).await;
    let msg = expect_error(resp, 429, "rate_limited").await;
    assert!(msg.contains("at most 100"), "{msg}");
    let resp = answered(&crowded, &server.url("/healthz")).await;
    assert_eq!(resp.status(), 200);
    // The refused silent ones are closed (the last thousand were all over the cap).
    let mut silent = silent;
    let refused = silent.split_off(500);
    for conn in refused.into_iter().step_by(50) {
        let (_, took) = until_closed(conn, Duration::from_secs(5));
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
    // Once the admitted ones go, the peer is served again.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered(&crowded, &server.url("/v1/models")).await.status() != 200 {
        assert!(
            Instant::now() < deadline,
            "still refused after its connections closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = server.drain_logs();
    assert!(
        !logs.iter().any(|l| l.contains("Too many open files")),
        "{logs:?}"
    );
    assert!(
        metric_with(
            &other,
            &server,
            "tollgate_connections_refused_per_peer_total"
        )
        .await
            > 0
    );
}

/// With no per-peer cap, the server's own cap (room for two descriptors a connection within
/// 512) turns the excess away with 503 and keeps its liveness check answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_keeps_descriptors_in_hand() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let db = TestDb::sqlite();
    let server = Server::start_after(
        "ulimit -n 512 && export TOLLGATE__SERVER__MAX_CONNECTIONS_PER_PEER=0 TOLLGATE__SERVER__FIRST_BYTE_TIMEOUT_SECONDS=20",
        &db.url,
    );
    assert!(server
        .drain_logs()
        .iter()
        .any(|l| l.contains("max_connections=128")));
    let at = addr(&server);
    let silent: Vec<TcpStream> = (0..600).map(|_| TcpStream::connect(at).unwrap()).collect();
    let resp = answered(&client(), &server.url("/v1/models")).await;
    let msg = expect_error(resp, 503, "service_unavailable").await;
    assert!(msg.contains("128"), "{msg}");
    let resp = answered(&client(), &server.url("/healthz")).await;
    assert_eq!(resp.status(), 200);
    // Once the silent ones go, the server serves everyone again.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client().get(server.url("/v1/models")).send().await {
            Ok(resp) if resp.status() == 200 => break,
            other if Instant::now() < deadline => {
                let _ = other;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("still refused after the silent connections closed: {other:?}"),
        }
    }
    assert!(!server
        .drain_logs()
        .iter()
        .any(|l| l.contains("Too many open files")));
}
