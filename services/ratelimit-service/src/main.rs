//! Usage:
//!   ratelimit-service --config FILE [--grpc ADDR:PORT] [--admin ADDR:PORT]
//!                     [--redis URL] [--redis-timeout MILLISECONDS]
//!
//! Defaults: gRPC on 127.0.0.1:8089, admin (/metrics, /healthz) on 127.0.0.1:9089,
//! Redis at redis://127.0.0.1:6379, 50 ms per Redis call. `RUST_LOG` sets the log level.

use ratelimit_service::config::Limits;
use ratelimit_service::metrics::Metrics;
use ratelimit_service::service::RateLimiter;
use ratelimit_service::store::RedisStore;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "usage: ratelimit-service --config FILE [--grpc ADDR:PORT] [--admin ADDR:PORT] [--redis URL] [--redis-timeout MILLISECONDS]";

struct Options {
    config: String,
    grpc: String,
    admin: String,
    redis: String,
    redis_timeout: Duration,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let options = match parse_args(std::env::args().skip(1).collect()) {
        Ok(options) => options,
        Err(message) => return fail(&format!("{message}\n{USAGE}")),
    };
    let limits = match std::fs::read_to_string(&options.config)
        .map_err(|error| format!("cannot read {}: {error}", options.config))
        .and_then(|text| Limits::parse(&text, &options.config).map_err(|error| error.to_string()))
    {
        Ok(limits) => limits,
        Err(message) => return fail(&message),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the runtime: {error}")),
    };
    runtime.block_on(async {
        // Inside the runtime: the connection manager spawns its reconnection tasks on it.
        let store = match RedisStore::new(&options.redis, options.redis_timeout) {
            Ok(store) => store,
            Err(message) => return fail(&message),
        };
        let bind = |address: String| async move {
            tokio::net::TcpListener::bind(&address)
                .await
                .map_err(|error| format!("cannot listen on {address}: {error}"))
        };
        let (grpc, admin) = match (bind(options.grpc.clone()).await, bind(options.admin.clone()).await) {
            (Ok(grpc), Ok(admin)) => (grpc, admin),
            (Err(message), _) | (_, Err(message)) => return fail(&message),
        };
        let domains = limits.domains();
        // The bound addresses (a port of 0 gets one from the kernel): the test harness reads them.
        let address = |listener: &tokio::net::TcpListener, asked: &str| {
            listener.local_addr().map_or(asked.to_string(), |address| address.to_string())
        };
        println!(
            "ratelimit-service listening on grpc://{} (admin http://{}), domains {}, Redis {}",
            address(&grpc, &options.grpc),
            address(&admin, &options.admin),
            domains.join(", "),
            ratelimit_service::store::redacted(&options.redis)
        );
        let metrics = Arc::new(Metrics::new(&domains));
        let limiter = RateLimiter { limits: Arc::new(limits), store, metrics };
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        match ratelimit_service::serve(limiter, grpc, admin, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => fail(&message),
        }
    })
}

fn parse_args(args: Vec<String>) -> Result<Options, String> {
    let mut options = Options {
        config: String::new(),
        grpc: "127.0.0.1:8089".into(),
        admin: "127.0.0.1:9089".into(),
        redis: "redis://127.0.0.1:6379".into(),
        redis_timeout: Duration::from_millis(50),
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--config" => options.config = value,
            "--grpc" => options.grpc = value,
            "--admin" => options.admin = value,
            "--redis" => options.redis = value,
            "--redis-timeout" => {
                let millis: u64 =
                    value.parse().map_err(|_| format!("--redis-timeout `{value}` is not milliseconds"))?;
                if millis == 0 {
                    return Err("--redis-timeout must be at least 1 ms".into());
                }
                options.redis_timeout = Duration::from_millis(millis);
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.config.is_empty() {
        return Err("--config is required".into());
    }
    Ok(options)
}

fn fail(message: &str) -> ExitCode {
    eprintln!("ratelimit-service: {message}");
    ExitCode::FAILURE
}
