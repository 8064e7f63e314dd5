//! Fallible host buffers for kernel outputs and temporaries.
//!
//! A kernel's output size comes from its caller's shapes, so it is user input. `vec![x; n]` and
//! `Vec::with_capacity(n)` abort the whole process when the memory cannot be had; these helpers
//! reserve first and turn that case into `Error::OutOfMemory`, which reaches the caller of the
//! tensor op like any other error.

use crate::error::{Error, Result};
use std::mem::MaybeUninit;

/// The error for a buffer of `n` elements of `T` that could not be reserved.
fn out_of_memory<T>(n: usize) -> Error {
    let ty = std::any::type_name::<T>().rsplit("::").next().unwrap_or("element");
    Error::OutOfMemory {
        op: "cpu buffer",
        what: format!("a buffer of {n} {ty} elements"),
        needed: (n as u64).saturating_mul(std::mem::size_of::<T>() as u64),
        available: None,
        source: "",
    }
}

/// An empty vector with room for exactly `n` elements.
pub(crate) fn reserve<T>(n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| out_of_memory::<T>(n))?;
    Ok(v)
}

/// `n` copies of `value` (`vec![value; n]`, fallibly).
pub(crate) fn filled<T: Clone>(n: usize, value: T) -> Result<Vec<T>> {
    let mut v = reserve(n)?;
    v.resize(n, value);
    Ok(v)
}

/// A vector of `n` elements that `init` writes, without filling it first: for kernel outputs
/// written in full, where a zero fill would be one more pass over memory for nothing.
///
/// # Safety
/// `init` must initialise every element of the slice it is given. (If it panics, the vector is
/// dropped with length 0: nothing uninitialised is read.)
pub(crate) unsafe fn written<T>(n: usize, init: impl FnOnce(&mut [MaybeUninit<T>])) -> Result<Vec<T>> {
    let mut v = reserve(n)?;
    init(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: `v` has capacity `n` (reserve) and the caller initialised all `n` elements.
    unsafe { v.set_len(n) };
    Ok(v)
}

/// The items of `iter`, of which there are `n` (`iter.collect()`, fallibly).
pub(crate) fn collect<T>(n: usize, iter: impl Iterator<Item = T>) -> Result<Vec<T>> {
    let mut v = reserve(n)?;
    v.extend(iter);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_buffer_is_an_error_naming_its_size() {
        let e = filled(usize::MAX / 2, 0f32).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::OutOfMemory { .. }), "{e:?}");
        assert!(msg.contains("f32 elements") && msg.contains("could not be allocated"), "{msg}");
        assert_eq!(collect(3, [1u8, 2, 3].into_iter()).unwrap(), vec![1, 2, 3]);
        assert_eq!(filled(2, 7u32).unwrap(), vec![7, 7]);
    }
}
