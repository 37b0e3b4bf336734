//! Bodies of the replies the filters send themselves (rejections, failures): a small JSON
//! object `{"error": <machine code>, "message": <for humans>}`. Messages never carry
//! credentials or request data beyond what the caller chooses to put there.

/// The body of a local reply, as bytes ready for `send_http_response`.
pub fn error_body(error: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": error, "message": message});
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_whatever_it_is_given() {
        let body = error_body("rate_limited", "rule \"a\"\n");
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed, serde_json::json!({"error": "rate_limited", "message": "rule \"a\"\n"}));
    }
}
