//! Test tools for Sluice users. (Being written.)
