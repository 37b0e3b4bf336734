//! The demo catalog gRPC service (`services/demo-catalog`) in this process, on a free port,
//! until dropped.

use std::net::SocketAddr;
use tokio::sync::oneshot;

pub struct Catalog {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Catalog {
    pub fn start() -> Catalog {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime
                .block_on(demo_catalog::serve(listener, async {
                    let _ = stopped.await;
                }))
                .unwrap();
        });
        Catalog { address, stop: Some(stop), thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
