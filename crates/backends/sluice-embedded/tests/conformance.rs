//! The shared conformance suite on the embedded engine, in real time, on a real directory.
//!
//! "Restarting the broker" closes the engine (checkpointing and releasing the directory's
//! lock) and opens it again on the same directory: everything confirmed must still be there.

use std::sync::Mutex;

use sluice_conformance::{Harness, Timing};
use sluice_embedded::EmbeddedBackend;

struct EmbeddedHarness {
    dir: tempfile::TempDir,
    // std Mutex: never held across an .await (cloned out, or swapped after the await).
    backend: Mutex<Option<EmbeddedBackend>>,
}

impl EmbeddedHarness {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let backend = EmbeddedBackend::open(dir.path())
            .await
            .expect("opening the engine");
        Self {
            dir,
            backend: Mutex::new(Some(backend)),
        }
    }

    fn current(&self) -> sluice_core::Result<EmbeddedBackend> {
        self.backend
            .lock()
            .expect("harness lock")
            .clone()
            .ok_or(sluice_core::Error::Closed("the engine is restarting"))
    }
}

impl Harness for EmbeddedHarness {
    type Backend = EmbeddedBackend;

    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn connect(&self) -> sluice_core::Result<EmbeddedBackend> {
        self.current()
    }

    fn timing(&self) -> Timing {
        Timing::in_process()
    }

    async fn restart_broker(&self) -> Option<sluice_core::Result<()>> {
        Some(
            async {
                let old = self.backend.lock().expect("harness lock").take();
                if let Some(old) = old {
                    old.close().await?;
                }
                let reopened = EmbeddedBackend::open(self.dir.path()).await?;
                *self.backend.lock().expect("harness lock") = Some(reopened);
                Ok(())
            }
            .await,
        )
    }
}

sluice_conformance::conformance_tests!(EmbeddedHarness::new().await);
