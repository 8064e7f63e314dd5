//! Compiling one loop for the widest vector instructions the CPU has.
//!
//! The crate is built for the x86-64 baseline (SSE2), so an auto-vectorized loop works 4 f32 lanes
//! at a time even on a CPU with AVX-512. [`widest_isa!`] wraps a body function (marked
//! `#[inline(always)]`) in variants compiled with `avx512f` and with `avx2` enabled, and picks one
//! at run time. The variants run the same IEEE operations in the same order (Rust never fuses a
//! multiply and an add on its own), so they give the same bits as the baseline: only the width of
//! the vectors changes. Loops whose order of operations depends on the vector width (a single
//! running sum, say) must fix that order in the source to keep this true.

/// `widest_isa!(fn name<T: Bound>(a: A, b: B) => body);` defines `fn name<T: Bound>(a: A, b: B)`
/// that runs `body(a, b)` compiled for AVX-512F, else AVX2, else the baseline, whichever the CPU
/// supports first. `body` must be `#[inline(always)]` (that is what puts its code inside each
/// variant) and return nothing.
macro_rules! widest_isa {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$T:ident: $bound:path>($($a:ident: $t:ty),* $(,)?) => $body:ident) => {
        $(#[$m])*
        $vis fn $name<$T: $bound>($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512<$T: $bound>($($a: $t),*) {
                    $body($($a),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2<$T: $bound>($($a: $t),*) {
                    $body($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { avx512($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2($($a),*) };
                }
            }
            $body($($a),*)
        }
    };
}
pub(crate) use widest_isa;
