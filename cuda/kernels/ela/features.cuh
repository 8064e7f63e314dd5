// The feature maps of the built-in ELA kernels and their vector-Jacobian products, one element at
// a time (docs/ela.md, "Kernels": the table of feature maps and the feature-map VJPs (V1)-(V6)):
// shared by the parallel non-causal form (noncausal.cu), the row kernels of the chunked paths
// (gemm_chunk.cu) and the epilogues of the chunked linear-attention kernels (la_chunk.cu).
// Compiled after the kernel-code defines (K_EXP, ...; cuda/src/kernels.rs).

// Feature c of a key row (psi) or a query row (phi) from its element xc = x[c] (used only for
// c < d), as `features` in recurrent.cu computes the whole vector: n2 = |x|^2, mc the log-scale of
// feature c and u the query's shift (Hadamard Exp only).
template <typename C>
__device__ __forceinline__ C nc_feature_at(int kern, bool key, C xc, int d, int c, C n2, C mc, C u) {
    if (kern == K_EXP) return key ? x_exp(xc - mc) : x_exp(xc + mc - u);
    if (kern == K_SUM || kern == K_SUB) {
        C two = (kern == K_SUM || !key) ? (C)2 : (C)-2;
        if (c < d) return key ? two * xc : xc;
        if (c == d) return key ? (C)1 : n2;
        return key ? n2 : (C)1;
    }
    if (kern == K_BLUE) return c < d ? (n2 + (C)1) * xc : n2 + (C)1;
    if (kern == K_ELU) return xc > (C)0 ? xc + (C)1 : x_exp(xc);
    return xc;
}

// Element e of dx = (d feature / d x)^T gf from x_e and gf_e, the gradients of the extra
// features gd = gf[d], gd1 = gf[d + 1] (the signed kernels), n2 = |x|^2 and, for the blueprint,
// two_s = 2 (x . gf[:d] + gf[d]): (V2)-(V6) of docs/ela.md (Hadamard Exp, (V1), is `phi * dphi`).
template <typename C>
__device__ __forceinline__ C nc_feature_vjp_at(int kern, bool key, C xe, C ge, C gd, C gd1, C n2, C two_s) {
    if (kern == K_SUM || kern == K_SUB) {
        if (key) return (kern == K_SUM ? (C)2 : (C)-2) * ge + (C)2 * gd1 * xe;
        return ge + (C)2 * gd * xe;
    }
    if (kern == K_BLUE) return (n2 + (C)1) * ge + two_s * xe;
    if (kern == K_ELU) return xe > (C)0 ? ge : ge * x_exp(xe);
    return ge;
}

// The gradients of a kernel's extra features: (gf[d], gf[d + 1]) where they exist, else 0.
template <typename C> __device__ __forceinline__ void nc_extra_grads(int kern, const C* gf, int d, C& gd, C& gd1) {
    const bool signed_sq = kern == K_SUM || kern == K_SUB;
    gd = (signed_sq || kern == K_BLUE) ? gf[d] : (C)0;
    gd1 = signed_sq ? gf[d + 1] : (C)0;
}

