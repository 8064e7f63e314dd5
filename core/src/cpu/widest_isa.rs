//! Compiling one loop for the widest vector instructions the CPU has.
//!
//! The crate is built for the x86-64 baseline (SSE2), so an auto-vectorized loop works 4 f32 lanes
//! at a time even on a CPU with AVX-512. [`widest_isa!`] wraps a body function (marked
//! `#[inline(always)]`) in variants compiled with `avx512f` and with `avx2` enabled, and picks one
//! at run time. The variants run the same IEEE operations in the same order (Rust never fuses a
//! multiply and an add on its own), so they give the same bits as the baseline: only the width of
//! the vectors changes. Loops whose order of operations depends on the vector width (a single
//! running sum, say) must fix that order in the source to keep this true.

/// ```text
/// widest_isa! {
///     /// docs
///     fn name<T: Bound>(a: A, b: &mut B) as name_body {
///         ...
///     }
/// }
/// ```
///
/// defines `name_body`, the body as written, marked `#[inline(always)]` (the baseline
/// compilation, which tests compare against), and `name`, which runs that body compiled for
/// AVX-512F, else AVX2, else the baseline, whichever the CPU supports first. Neither returns a
/// value: results go through `&mut` arguments.
macro_rules! widest_isa {
    (
        $(#[$m:meta])*
        $vis:vis fn $name:ident<$T:ident: $bound:path>($($a:ident: $t:ty),* $(,)?) as $body_name:ident $body:block
    ) => {
        $(#[$m])*
        #[inline(always)]
        $vis fn $body_name<$T: $bound>($($a: $t),*) $body

        $(#[$m])*
        $vis fn $name<$T: $bound>($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512<$T: $bound>($($a: $t),*) {
                    $body_name($($a),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2<$T: $bound>($($a: $t),*) {
                    $body_name($($a),*)
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
            $body_name($($a),*)
        }
    };
}
pub(crate) use widest_isa;
