//! Real HTTP/1.1 backends on loopback: a thread per connection, keep-alive, bodies by
//! content-length or chunked, each backend counting its hits. The echo backend has knobs
//! later filters test against: `?status=503`, `?delay_ms=200`, `?size=100000` (pad the JSON
//! body to at least that many bytes), `?content_type=text/html` (send a non-JSON body).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest request head accepted; longer ones get 431 and the connection is closed.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// An idle keep-alive connection is closed after this, so no thread waits forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct BackendRequest {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl BackendRequest {
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub struct BackendResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Close the connection (after the delay) without answering.
    pub reset: bool,
    /// Further response headers (name, value).
    pub headers: Vec<(String, String)>,
}

impl BackendResponse {
    pub fn json(status: u16, value: &serde_json::Value) -> BackendResponse {
        BackendResponse {
            status,
            content_type: "application/json".into(),
            body: value.to_string().into_bytes(),
            delay: Duration::ZERO,
            reset: false,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> BackendResponse {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

pub type Handler = Arc<dyn Fn(&BackendRequest) -> BackendResponse + Send + Sync>;

pub struct Backend {
    port: u16,
    hits: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Backend {
    /// Serves `handler` on `bind` (`127.0.0.1:0` for a kernel-chosen port).
    pub fn start(bind: &str, handler: Handler) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(bind)?;
        let port = listener.local_addr()?.port();
        let hits = Arc::new(AtomicU64::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (hits, stopping) = (hits.clone(), stopping.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (handler, hits) = (handler.clone(), hits.clone());
                    std::thread::spawn(move || serve_connection(stream, handler.as_ref(), &hits));
                }
            })
        };
        Ok(Backend { port, hits, stopping, acceptor: Some(acceptor) })
    }

    /// The echo backend on a free loopback port; `name` appears in its answers.
    pub fn echo(name: &str) -> Backend {
        let name = name.to_string();
        Backend::start("127.0.0.1:0", Arc::new(move |request| echo_response(&name, request)))
            .unwrap_or_else(|e| panic!("cannot start backend: {e}"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Blocks until the process is killed (for the demo backends binary).
    pub fn wait(mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag; connection threads end with their peers.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve_connection(
    stream: TcpStream,
    handler: &(dyn Fn(&BackendRequest) -> BackendResponse + Send + Sync),
    hits: &AtomicU64,
) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(status) => {
                let _ = writer.write_all(
                    format!("HTTP/1.1 {status} Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                );
                return;
            }
        };
        hits.fetch_add(1, Ordering::SeqCst);
        let close = request.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let response = handler(&request);
        if !response.delay.is_zero() {
            std::thread::sleep(response.delay);
        }
        if response.reset {
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return;
        }
        let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, reason(response.status));
        if response.status != 304 {
            head += &format!("content-type: {}\r\n", response.content_type);
        }
        // Caches compute an answer's age from its date (RFC 9110 §6.6.1: an origin with a clock sends it).
        head += &format!(
            "date: {}\r\ncontent-length: {}\r\n",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
            response.body.len()
        );
        for (name, value) in &response.headers {
            head += &format!("{name}: {value}\r\n");
        }
        head += if close { "connection: close\r\n\r\n" } else { "\r\n" };
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&response.body);
        if writer.write_all(&bytes).is_err() || close {
            return;
        }
    }
}

/// One request from the connection; `Ok(None)` when the peer closed it cleanly, `Err(status)`
/// for a request that cannot be parsed.
fn read_request(reader: &mut BufReader<TcpStream>) -> Result<Option<BackendRequest>, u16> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let read =
            reader.by_ref().take((MAX_HEAD_BYTES + 1 - before) as u64).read_until(b'\n', &mut head).map_err(|_| 400u16);
        match read {
            Ok(0) if head.is_empty() => return Ok(None),
            Ok(0) | Err(_) => return if head.is_empty() { Ok(None) } else { Err(400) },
            Ok(_) => {}
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(431);
        }
        if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target)) = (request_line.next(), request_line.next()) else {
        return Err(400);
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let (path, query) = split_url(target);
    let mut request = BackendRequest { method: method.to_string(), path, query, headers, body: Vec::new() };
    if request.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        request.body = read_chunked(reader)?;
    } else if let Some(length) = request.header("content-length") {
        let length: usize = length.parse().map_err(|_| 400u16)?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body).map_err(|_| 400u16)?;
        request.body = body;
    }
    Ok(Some(request))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>, u16> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line).map_err(|_| 400u16)?;
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16).map_err(|_| 400u16)?;
        if size == 0 {
            // Trailers (ignored) end with an empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).map_err(|_| 400u16)? == 0 || line == "\r\n" {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size + 2, 0);
        reader.read_exact(&mut body[start..]).map_err(|_| 400u16)?;
        body.truncate(start + size);
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let pairs = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name.to_string(), value.to_string())
        })
        .collect();
    (path.to_string(), pairs)
}

/// `{"service", "method", "path", "query", "headers"}`, shaped by the knobs: `status`,
/// `delay_ms`, `size` (pad the body to this many bytes), `content_type` (answer HTML with that
/// content type), `reset` (close the connection without answering).
fn echo_response(name: &str, request: &BackendRequest) -> BackendResponse {
    let status = request.query_param("status").and_then(|s| s.parse().ok()).unwrap_or(200);
    let delay =
        request.query_param("delay_ms").and_then(|s| s.parse().ok()).map(Duration::from_millis).unwrap_or_default();
    let size: usize = request.query_param("size").and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut body = serde_json::json!({
        "service": name,
        "method": request.method,
        "path": request.path,
        "query": request.query.iter().map(|(n, v)| (n.clone(), serde_json::Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "headers": request.headers.iter().map(|(n, v)| (n.clone(), serde_json::Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
    });
    let length = body.to_string().len();
    if size > length {
        body["padding"] = "x".repeat(size - length).into();
    }
    let mut response = BackendResponse::json(status, &body);
    response.delay = delay;
    response.reset = request.query_param("reset").is_some();
    if let Some(content_type) = request.query_param("content_type") {
        response.content_type = content_type.replace("%2F", "/");
        response.body = format!("<html><body>{name}</body></html>").into_bytes();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;

    #[test]
    fn echo_backend_honours_its_knobs_and_counts_hits() {
        let backend = Backend::echo("users");
        let base = format!("http://127.0.0.1:{}", backend.port());
        let plain = client::request("GET", &format!("{base}/a/b?x=1"), &[("x-test", "yes")]);
        assert_eq!(plain.status, 200);
        let body = plain.json();
        assert_eq!(body["service"], "users");
        assert_eq!(body["path"], "/a/b");
        assert_eq!(body["query"]["x"], "1");
        assert_eq!(body["headers"]["x-test"], "yes");

        let failing = client::get(&format!("{base}/?status=503"));
        assert_eq!(failing.status, 503);
        let big = client::get(&format!("{base}/?size=5000"));
        assert!(big.body.len() >= 5000);
        let started = std::time::Instant::now();
        assert_eq!(client::get(&format!("{base}/?delay_ms=150")).status, 200);
        assert!(started.elapsed() >= Duration::from_millis(150));
        let html = client::get(&format!("{base}/?content_type=text%2Fhtml"));
        assert_eq!(html.header("content-type"), Some("text/html"));
        assert!(serde_json::from_slice::<serde_json::Value>(&html.body).is_err());
        assert_eq!(backend.hits(), 5);
    }
}
