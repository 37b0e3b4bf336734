//! The only filter crate that meets the proxy-wasm ABI: [`ProxyHost`] implements the host trait
//! with the real host calls ([`abi`]), and Envoy's callbacks ([`entry`]) run a module's stages
//! ([`driver`]). Every module (`auth.wasm`, …, and the bundle `gateway.wasm`) is a call of
//! [`module!`] with a function that builds its stages from the plugin configuration.
//!
//! The ABI is declared here rather than through the proxy-wasm SDK: the SDK exports every
//! entry point (so Envoy makes every callback, `proxy_on_done` included, for each request) and
//! finds each callback's context through maps and trait objects of its own, which a request
//! paid for on every callback (see docs/benchmark.md).

mod abi;
#[cfg(any(test, target_family = "wasm"))]
mod allocator;
mod context_ids;
mod driver;
mod entry;
mod proxy_host;

/// Every module allocates through the recycling front (see [`allocator`]).
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: allocator::Recycling<std::alloc::System> = allocator::Recycling::new(std::alloc::System);

pub use driver::ChainBuilder;
pub use entry::install;
pub use proxy_host::ProxyHost;

/// Defines the module's entry point: `module!("auth", build)` where `build` is a
/// [`ChainBuilder`]. `name` prefixes the driver's own log lines.
#[macro_export]
macro_rules! module {
    ($name:expr, $build:expr) => {
        #[cfg(target_os = "wasi")]
        extern "C" {
            fn __wasm_call_ctors();
        }

        /// Envoy calls this once when it loads the module (a WASI reactor's entry point).
        #[no_mangle]
        pub extern "C" fn _initialize() {
            #[cfg(target_os = "wasi")]
            // SAFETY: the WASI reactor convention: static constructors run once, first.
            unsafe {
                __wasm_call_ctors();
            }
            $crate::install($name, $build);
        }
    };
}
