//! The demo services for `make demo` and docker-compose.
//!
//! Usage: demo-backends [BIND_ADDRESS]   (default 127.0.0.1; docker-compose passes 0.0.0.0)
//! Serves users on :8081, orders on :8082, inventory on :8083 and the development-only
//! identity provider (JWKS and tokens) on :8084 until killed.

use integration_tests::backend::Backend;
use integration_tests::demo;

const FIRST_PORT: u16 = 8081;

fn main() {
    let bind = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1".to_string());
    let mut backends = Vec::new();
    for (offset, service) in (0u16..).zip(demo::SERVICES) {
        let address = format!("{bind}:{}", FIRST_PORT + offset);
        let Some(handler) = demo::handler(service) else {
            continue;
        };
        match Backend::start(&address, handler) {
            Ok(backend) => {
                let path = if service == "idp" { "token".to_string() } else { service.to_string() };
                println!("{service:<9} listening on http://{address}/{path}");
                backends.push(backend);
            }
            Err(error) => {
                eprintln!("cannot listen on {address} for {service}: {error}");
                std::process::exit(1);
            }
        }
    }
    for backend in backends {
        backend.wait();
    }
}
