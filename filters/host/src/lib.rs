//! The only filter crate that imports `proxy_wasm`: [`ProxyHost`] implements the host trait
//! with the real host calls, and [`install`] runs a module's stages through Envoy's callbacks
//! ([`driver`]). Every module (`auth.wasm`, …, and the bundle `gateway.wasm`) is a call of
//! [`module!`] with a function that builds its stages from the plugin configuration.

#[cfg(any(test, target_family = "wasm"))]
mod allocator;
mod driver;
mod proxy_host;

/// Every module allocates through the recycling front (see [`allocator`]).
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: allocator::Recycling<std::alloc::System> = allocator::Recycling::new(std::alloc::System);

pub use driver::{install, ChainBuilder};
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
