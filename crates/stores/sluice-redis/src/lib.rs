//! Durable Sluice stores on Redis. (Being written.)
