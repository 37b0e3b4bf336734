//! The demo catalog service for `make demo`, docker-compose and the tests.
//!
//! Usage:
//!   demo-catalog [ADDRESS:PORT]          serve gRPC (default 127.0.0.1:8085) until killed
//!   demo-catalog --descriptor-set PATH   write the descriptor set Envoy's transcoder loads

use std::process::ExitCode;

const DEFAULT_ADDRESS: &str = "127.0.0.1:8085";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--descriptor-set", path] => match std::fs::write(path, demo_catalog::DESCRIPTOR_SET) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&format!("cannot write {path}: {error}")),
        },
        [] => run(DEFAULT_ADDRESS),
        [address] if !address.starts_with('-') => run(address),
        _ => fail("usage: demo-catalog [ADDRESS:PORT] | demo-catalog --descriptor-set PATH"),
    }
}

fn run(address: &str) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the runtime: {error}")),
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener,
            Err(error) => return fail(&format!("cannot listen on {address}: {error}")),
        };
        println!("catalog   listening on grpc://{address} (catalog.v1.Catalog, grpc.health.v1.Health)");
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        match demo_catalog::serve(listener, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&format!("serving failed: {error}")),
        }
    })
}

fn fail(message: &str) -> ExitCode {
    eprintln!("demo-catalog: {message}");
    ExitCode::FAILURE
}
