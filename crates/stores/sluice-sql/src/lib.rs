//! Sluice on SQL databases. (Being written.)
