//! Intentionally empty: this crate exists only for its criterion benchmarks in `benches/`.
