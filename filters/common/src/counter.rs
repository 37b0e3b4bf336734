//! Envoy counters counted inside the VM and added to Envoy's counter on a tick: an increment
//! is otherwise a host call on every request.

use crate::host::{Host, MetricKind};
use std::cell::Cell;

pub struct BatchedCounter {
    /// `None` where the host refused to define it (its counts are then dropped).
    id: Option<u32>,
    pending: Cell<u64>,
}

impl BatchedCounter {
    pub fn define(host: &dyn Host, name: &str) -> BatchedCounter {
        BatchedCounter { id: host.define_metric(MetricKind::Counter, name), pending: Cell::new(0) }
    }

    pub fn add(&self, count: u64) {
        self.pending.set(self.pending.get().saturating_add(count));
    }

    pub fn flush(&self, host: &dyn Host) {
        let pending = self.pending.replace(0);
        if let (Some(id), true) = (self.id, pending > 0) {
            // A failed increment only loses samples; requests must not fail for it.
            let _ = host.increment_metric(id, pending);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;

    #[test]
    fn adds_in_the_vm_and_increments_once_per_flush() {
        let host = FakeHost::default();
        let counter = BatchedCounter::define(&host, "gateway_things_total");
        counter.add(1);
        counter.add(2);
        assert_eq!(host.counter("gateway_things_total"), 0);
        counter.flush(&host);
        counter.flush(&host);
        assert_eq!(host.counter("gateway_things_total"), 3);
        assert_eq!(host.calls_named("increment_metric"), 1, "an empty flush makes no host call");
    }
}
