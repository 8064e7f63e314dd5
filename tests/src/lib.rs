//! Reference implementations
