// The recurrent step of fused Hadamard-Exp ELA for head sizes 64/128 (decoding; compiled in the
// chunked module, after tile.cuh, for its dtype and sizes): one launch for every sequence. The
// per-token scan of recurrent.cu takes every other step.

// One token for every sequence (one block each): absorb (k, v) into the f32 state with the
// running log-scales, then y = phi^T S / (phi . z), phi = exp(q + m' - u), u = max_f (q_f + m'_f)
// (the recurrent form of docs/ela.md, (L) with (S'); u is the exact largest log-term, so den >= 1). Each thread
// streams F / RG rows of four state columns as 16-byte loads and stores; memory-bound.
extern "C" __global__ void __launch_bounds__(ELA_THREADS)
    ela_step_fast(ST* y, const ST* q, const ST* k, const ST* v, float* S, float* z, float* m) {
    constexpr int F = ELA_F, DV = ELA_DV, CG = DV / 4, RG = ELA_THREADS / CG;
    static_assert(RG * CG == ELA_THREADS && F % RG == 0, "step tiling");
    __shared__ float rs[F], ps[F], ph[F], zs[F], vv[DV], red[32], part[RG * DV];
    const int b = blockIdx.x, tid = threadIdx.x;
    if (tid < F) {
        const i64 o = (i64)b * F + tid;
        const float mo = m[o], kf = DT::load(k[o]), mn = fmaxf(mo, kf);
        const float r = units_factor(mo, mn), p = __expf(kf - mn);
        const float zn = z[o] * r + p;
        z[o] = zn;
        m[o] = mn;
        rs[tid] = r;
        ps[tid] = p;
        zs[tid] = zn;
        ph[tid] = DT::load(q[o]) + mn;
    }
    if (tid < DV) vv[tid] = DT::load(v[(i64)b * DV + tid]);
    __syncthreads();
    const float u = block_max<float>(tid < F ? ph[tid] : neg_inf<float>(), red);
    float pd = 0.f;
    if (tid < F) {
        const float p = __expf(ph[tid] - u);
        ph[tid] = p;
        pd = p * zs[tid];
    }
    const float den = block_sum<float>(pd, red);
    __syncthreads();
    const int cg = tid % CG, rg = tid / CG;
    const float v0 = vv[4 * cg], v1 = vv[4 * cg + 1], v2 = vv[4 * cg + 2], v3 = vv[4 * cg + 3];
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    ela_f4* Sb = (ela_f4*)(S + (i64)b * F * DV);
#pragma unroll
    for (int f = rg; f < F; f += RG) {
        ela_f4 s = Sb[f * CG + cg];
        const float r = rs[f], p = ps[f], w = ph[f];
        s.x = s.x * r + p * v0;
        s.y = s.y * r + p * v1;
        s.z = s.z * r + p * v2;
        s.w = s.w * r + p * v3;
        Sb[f * CG + cg] = s;
        a0 += w * s.x;
        a1 += w * s.y;
        a2 += w * s.z;
        a3 += w * s.w;
    }
    part[rg * DV + 4 * cg] = a0;
    part[rg * DV + 4 * cg + 1] = a1;
    part[rg * DV + 4 * cg + 2] = a2;
    part[rg * DV + 4 * cg + 3] = a3;
    __syncthreads();
    if (tid < DV) {
        float s = 0.f;
#pragma unroll
        for (int g = 0; g < RG; ++g) s += part[g * DV + tid];
        y[(i64)b * DV + tid] = DT::store(s / den);
    }
}
