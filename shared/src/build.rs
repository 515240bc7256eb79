//! Building batch input in memory.
