//! A small blocking HTTP client for tests: every status is a response, never an error.

use std::time::Duration;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build()
}

pub fn get(url: &str) -> Response {
    request("GET", url, &[])
}

/// Sends a request without a body; a connection failure gives status 0 with the error as
/// the body.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Response {
    request_with_body(method, url, headers, &[])
}

/// Sends a request with `body` (sent with a content-length when not empty).
pub fn request_with_body(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut request = agent().request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let sent = if body.is_empty() { request.call() } else { request.send_bytes(body) };
    let response = match sent {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => return Response { status: 0, headers: vec![], body: error.to_string().into_bytes() },
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| response.header(&name).map(|value| (name.clone(), value.to_string())))
        .collect();
    let mut body = Vec::new();
    let _ = std::io::Read::read_to_end(&mut response.into_reader(), &mut body);
    Response { status, headers, body }
}

/// Sends `head` (request line and headers, without the blank line) as raw bytes over a new
/// connection, for requests a well-behaved client library refuses to send (non-UTF-8 or
/// oversized header values). Returns the status (0 when the connection fails).
pub fn raw_request(base_url: &str, head: &[u8]) -> Response {
    use std::io::{Read, Write};
    let address = base_url.trim_start_matches("http://");
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return Response { status: 0, headers: vec![], body: b"connect failed".to_vec() };
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut request = head.to_vec();
    request.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    if stream.write_all(&request).is_err() {
        return Response { status: 0, headers: vec![], body: b"write failed".to_vec() };
    }
    // Read until the body is complete (by content-length) or the connection ends: waiting for
    // the close alone costs Envoy's delayed-close time on every request.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(read) => raw.extend_from_slice(chunk.get(..read).unwrap_or_default()),
        }
        if response_complete(&raw) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|line| line.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Response { status, headers, body: body.as_bytes().to_vec() }
}

/// True when `raw` holds a whole response whose length its `content-length` gives.
fn response_complete(raw: &[u8]) -> bool {
    let Some(head_end) = raw.windows(4).position(|window| window == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(raw.get(..head_end).unwrap_or_default()).to_ascii_lowercase();
    let length = head.lines().find_map(|line| line.strip_prefix("content-length:")?.trim().parse::<usize>().ok());
    length.is_some_and(|length| raw.len() >= head_end + 4 + length)
}
