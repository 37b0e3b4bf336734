//! The counters in Redis: one script call per request updates every descriptor's bucket
//! atomically (`gcra.lua`), so any number of service instances share one exact count.

use crate::config::Limit;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// One descriptor to charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub key: String,
    pub limit: Limit,
    pub hits: u64,
}

/// What the script decided for one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted and charged.
    Admitted { backlog_micros: u64 },
    /// Over its limit; nothing charged.
    OverLimit { backlog_micros: u64 },
    /// An earlier descriptor was over its limit, so this one was neither checked nor charged.
    NotReached { backlog_micros: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No answer within the configured time.
    Timeout,
    /// Redis refused or the connection failed.
    Redis(String),
    /// The script's answer had an unexpected shape.
    Malformed,
}

impl StoreError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Redis(_) => "redis_error",
            StoreError::Malformed => "malformed_reply",
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Timeout => write!(formatter, "Redis did not answer in time"),
            StoreError::Redis(error) => write!(formatter, "Redis failed: {error}"),
            StoreError::Malformed => write!(formatter, "the script's reply has an unexpected shape"),
        }
    }
}

#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    script: redis::Script,
    timeout: Duration,
}

impl RedisStore {
    /// Connects lazily: the service starts (and answers UNAVAILABLE) while Redis is down, and
    /// reconnects on its own when Redis is back.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, String> {
        use redis::IntoConnectionInfo;
        let bad_url = |error: redis::RedisError| format!("bad Redis URL `{}`: {error}", redacted(url));
        // Without TCP_NODELAY a small script call can wait for a delayed ACK (tens of ms).
        let info = url
            .into_connection_info()
            .map_err(bad_url)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(bad_url)?;
        // Few quick reconnect attempts: a request never waits on them longer than `timeout`,
        // and the next request after a failure starts a fresh attempt.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200))
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(timeout));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| format!("cannot set up the Redis connection: {error}"))?;
        Ok(RedisStore { connection, script: redis::Script::new(include_str!("gcra.lua")), timeout })
    }

    /// Charges `charges` in order (see `gcra.lua`); one outcome per charge.
    pub async fn charge(&self, charges: &[Charge]) -> Result<Vec<Outcome>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for charge in charges {
            invocation.key(&charge.key);
            invocation.arg(charge.limit.interval_micros()).arg(charge.limit.burst).arg(charge.hits);
        }
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection)).await {
            Err(_) => return Err(StoreError::Timeout),
            Ok(Err(error)) => return Err(StoreError::Redis(error.to_string())),
            Ok(Ok(reply)) => reply,
        };
        parse_reply(&reply, charges.len())
    }

    /// True when Redis answers PING in time.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        match tokio::time::timeout(self.timeout, ping).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Err(error)) => Err(StoreError::Redis(error.to_string())),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

/// `url` without its password (`redis://user:***@host:6379`), for logs.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// `{now, code_1, backlog_1, ...}` into one outcome per charge.
fn parse_reply(reply: &[i64], expected: usize) -> Result<Vec<Outcome>, StoreError> {
    let pairs = reply.get(1..).ok_or(StoreError::Malformed)?;
    if pairs.len() != expected * 2 {
        return Err(StoreError::Malformed);
    }
    pairs
        .chunks_exact(2)
        .map(|pair| {
            let (code, backlog) = match pair {
                [code, backlog] => (*code, u64::try_from(*backlog).map_err(|_| StoreError::Malformed)?),
                _ => return Err(StoreError::Malformed),
            };
            match code {
                1 => Ok(Outcome::Admitted { backlog_micros: backlog }),
                2 => Ok(Outcome::OverLimit { backlog_micros: backlog }),
                0 => Ok(Outcome::NotReached { backlog_micros: backlog }),
                _ => Err(StoreError::Malformed),
            }
        })
        .collect()
}

/// The Redis key of one descriptor's bucket: the domain, the entries and the limit, as JSON
/// (unambiguous whatever the values hold). A changed limit starts a fresh bucket, as a changed
/// local rule does.
pub fn bucket_key(domain: &str, entries: &[(String, String)], limit: &Limit) -> String {
    let limit = [u64::from(limit.requests_per_unit), limit.unit.seconds(), u64::from(limit.burst)];
    format!("ratelimit:{}", serde_json::json!([domain, entries, limit]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Unit;

    #[test]
    fn replies_map_to_outcomes_in_order() {
        assert_eq!(
            parse_reply(&[1_764_000_000_000_000, 1, 600_000, 2, 0, 0, 5], 3),
            Ok(vec![
                Outcome::Admitted { backlog_micros: 600_000 },
                Outcome::OverLimit { backlog_micros: 0 },
                Outcome::NotReached { backlog_micros: 5 }
            ])
        );
        assert_eq!(parse_reply(&[1, 1, 600_000], 2), Err(StoreError::Malformed));
        assert_eq!(parse_reply(&[], 0), Err(StoreError::Malformed));
        assert_eq!(parse_reply(&[1, 3, 0], 1), Err(StoreError::Malformed));
        assert_eq!(parse_reply(&[1, 1, -4], 1), Err(StoreError::Malformed));
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(redacted("redis://:s3cret@redis:6379"), "redis://:***@redis:6379");
        assert_eq!(redacted("rediss://app:s3cret@redis:6379/0"), "rediss://app:***@redis:6379/0");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redacted("not a url"), "not a url");
    }

    #[test]
    fn keys_cannot_be_confused_by_their_values() {
        let limit = Limit { requests_per_unit: 100, unit: Unit::Minute, burst: 100 };
        let entries = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
        };
        assert_eq!(
            bucket_key("gateway", &entries(&[("rule", "r"), ("consumer", "ada")]), &limit),
            r#"ratelimit:["gateway",[["rule","r"],["consumer","ada"]],[100,60,100]]"#
        );
        assert_ne!(
            bucket_key("gateway", &entries(&[("a", "b\",\"c")]), &limit),
            bucket_key("gateway", &entries(&[("a", "b"), ("c", "")]), &limit)
        );
        let other_limit = Limit { burst: 10, ..limit };
        assert_ne!(
            bucket_key("g", &entries(&[("a", "b")]), &limit),
            bucket_key("g", &entries(&[("a", "b")]), &other_limit)
        );
    }
}
