//! The monitoring center (issue 16, under way).
//!
//! So far: [`chunk`], the compressed form of a series' samples on disk and in memory:
//! Gorilla's delta-of-delta timestamps and XOR values, with the bucket sizes Prometheus uses,
//! so that a sample of a regular scrape takes from a few bits (a constant) to about two bytes
//! (a counter that grows at every scrape).

pub mod chunk;
