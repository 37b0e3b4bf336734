//! Which context's work is running, and which context started each call not yet answered.
//! Envoy hands the answer to every HTTP or gRPC call to the root context (calls belong to it,
//! so they outlive a stream); the answer to a call a stream's stage made goes back to that
//! stream. The entry points set the running context; the driver marks the work a root
//! callback does for a paused stream ([`as_stream`]); the host notes each call it starts.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a context id or a call token: the host hands them out in sequence, so one
/// multiplication spreads them well, and SipHash would cost more than the lookup.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8 | u64::from(*byte)).wrapping_mul(SPREAD);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(SPREAD);
    }
}

/// A map keyed by context id or call token.
pub(crate) type IdMap<T> = HashMap<u32, T, BuildHasherDefault<IdHasher>>;

thread_local! {
    /// The context whose work is running (a VM is single-threaded).
    static ACTIVE: Cell<u32> = const { Cell::new(0) };
    /// Each call's token, to the context whose work started it.
    static CALLS: RefCell<IdMap<u32>> = const { RefCell::new(HashMap::with_hasher(BuildHasherDefault::new())) };
}

/// Envoy's callback for `context_id` is running.
pub(crate) fn set_active(context_id: u32) {
    ACTIVE.with(|active| active.set(context_id));
}

/// Runs `work` as the work of stream `context_id` (a root callback acting on a paused
/// stream): calls it starts are answered to that stream.
pub(crate) fn as_stream<T>(context_id: u32, work: impl FnOnce() -> T) -> T {
    let outer = ACTIVE.with(|active| active.replace(context_id));
    let result = work();
    set_active(outer);
    result
}

/// Notes a call the running context started.
pub(crate) fn call_started(token: u32) {
    let context_id = ACTIVE.with(Cell::get);
    CALLS.with(|calls| calls.borrow_mut().insert(token, context_id));
}

/// The context that started call `token`, which is answered now (`None`: not a call this
/// module knows of).
pub(crate) fn call_answered(token: u32) -> Option<u32> {
    CALLS.with(|calls| calls.borrow_mut().remove(&token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_goes_to_the_context_whose_work_started_the_call() {
        set_active(1);
        call_started(10);
        as_stream(7, || call_started(11));
        call_started(12);
        assert_eq!(call_answered(11), Some(7), "started for a paused stream by a root callback");
        assert_eq!(call_answered(10), Some(1));
        assert_eq!(call_answered(12), Some(1), "the root is running again after the stream's work");
        assert_eq!(call_answered(10), None, "each answer is handed over once");
    }
}
