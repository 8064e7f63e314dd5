//! Reference implementations

pub mod reference;
