//! The demo services for `make demo`, docker-compose and the tests of the shipped configs.
//!
//! Usage: demo-backends [BIND_ADDRESS [FIRST_PORT [SERVICE...]]]
//!
//! Serves each service on FIRST_PORT plus its place in the list users, orders, inventory, idp
//! (so with the defaults, 127.0.0.1 and 8081: users on :8081, orders on :8082, inventory on
//! :8083 and the development-only identity provider on :8084) until killed. Naming services
//! serves only those, which is how a second instance of the API services is started
//! (`demo-backends 127.0.0.1 8091 users orders inventory`); the identity provider holds a key
//! made at start, so the demo runs one instance of it.

use integration_tests::backend::Backend;
use integration_tests::demo;

const DEFAULT_FIRST_PORT: u16 = 8081;

fn main() {
    let mut args = std::env::args().skip(1);
    let bind = args.next().unwrap_or_else(|| "127.0.0.1".to_string());
    let first_port = match args.next().map(|port| port.parse::<u16>()) {
        None => DEFAULT_FIRST_PORT,
        Some(Ok(port)) => port,
        Some(Err(_)) => fail("FIRST_PORT must be a port number"),
    };
    let chosen: Vec<String> = args.collect();
    if let Some(unknown) = chosen.iter().find(|name| !demo::SERVICES.contains(&name.as_str())) {
        fail(&format!("unknown service `{unknown}` (known: {})", demo::SERVICES.join(", ")));
    }
    let mut backends = Vec::new();
    for (offset, service) in (0u16..).zip(demo::SERVICES) {
        if !chosen.is_empty() && !chosen.iter().any(|name| name == service) {
            continue;
        }
        let Some(handler) = demo::handler(service) else { continue };
        let address = format!("{bind}:{}", first_port + offset);
        match Backend::start(&address, handler) {
            Ok(backend) => {
                let path = if service == "idp" { "token".to_string() } else { service.to_string() };
                println!("{service:<9} listening on http://{address}/{path}");
                backends.push(backend);
            }
            Err(error) => fail(&format!("cannot listen on {address} for {service}: {error}")),
        }
    }
    for backend in backends {
        backend.wait();
    }
}

fn fail(message: &str) -> ! {
    eprintln!("demo-backends: {message}");
    std::process::exit(1);
}
