//! The shared conformance suite, run on the memory backend in real time.
//!
//! Every "connection" is a clone of one `MemoryBackend`, so they share its state. There is no
//! connection to lose and nothing survives a restart: those two scenarios print `SKIPPED`.

use sluice_conformance::{Harness, Timing};
use sluice_memory::MemoryBackend;

/// One in-process backend per test.
struct MemoryHarness {
    backend: MemoryBackend,
}

impl Harness for MemoryHarness {
    type Backend = MemoryBackend;

    fn name(&self) -> &'static str {
        "memory"
    }

    async fn connect(&self) -> sluice_core::Result<MemoryBackend> {
        Ok(self.backend.clone())
    }

    fn timing(&self) -> Timing {
        Timing::in_process()
    }
}

sluice_conformance::conformance_tests!(MemoryHarness {
    backend: MemoryBackend::new(),
});
