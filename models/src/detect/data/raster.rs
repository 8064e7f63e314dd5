//! The synthetic set's painter: a scanline polygon filler, textures, cluttered backgrounds and
//! distractors, all on a plain `Vec<u8>` RGB canvas.
//!
//! Every shape is a list of closed polygon contours filled with the even-odd rule, sampling pixel
//! centres: a pixel belongs to a shape when its centre `(x + 0.5, y + 0.5)` is inside. One rule
//! for all shapes (a circle is a fine polygon, a ring is two contours) makes the covered pixel set
//! exact and cheap to compute row by row, which is what lets the generator label the *visible*
//! pixels of every object honestly. Edges are hard (no anti-aliasing) for the same reason: a pixel
//! either belongs to an object or not.
//!
//! Per-pixel noise comes from integer hashes and xorshift streams seeded from the image's
//! [`Rng`], not from the `Rng` itself, so it costs a few integer ops per pixel and the `Rng`
//! stream's length does not depend on the image size.

use ela_core::Rng;

/// An RGB canvas of `n x n` pixels, row-major, 3 bytes a pixel.
pub(crate) struct Canvas {
    pub n: usize,
    pub px: Vec<u8>,
}

/// A fast 32-bit integer hash (lowbias32): per-pixel noise without an RNG stream.
#[inline]
pub(crate) fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// Uniform in `[lo, hi)`.
#[inline]
pub(crate) fn unif(rng: &mut Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.uniform() as f32
}

/// A random colour from HSV with saturation and value in the given ranges.
pub(crate) fn random_colour(rng: &mut Rng, s: (f32, f32), v: (f32, f32)) -> [f32; 3] {
    let h = unif(rng, 0.0, 6.0);
    let s = unif(rng, s.0, s.1);
    let v = unif(rng, v.0, v.1) * 255.0;
    let f = h - h.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match h as u32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// `x.floor()` without the libm call that baseline x86-64 makes of it (|x| < 2^31).
#[inline]
fn floor(x: f32) -> f32 {
    let t = x as i32 as f32;
    if x < t {
        t - 1.0
    } else {
        t
    }
}

#[inline]
fn to_u8(v: f32) -> u8 {
    v.clamp(0.0, 255.0) as u8
}

/// Fill the even-odd interior of `contours` (closed polygons, pixel coordinates) in an `n x n`
/// image, calling `f(x, y)` once for every pixel whose centre is inside, row by row.
pub(crate) fn fill_polygon(contours: &[Vec<[f32; 2]>], n: usize, mut f: impl FnMut(usize, usize)) {
    // Each non-horizontal edge, top end first; a row's crossings are where its centre line meets
    // the edges that span it (half-open in y so shared vertices are counted once).
    struct Edge {
        y0: f32,
        y1: f32,
        x0: f32,
        dxdy: f32,
    }
    let mut edges = Vec::new();
    let (mut ymin, mut ymax) = (f32::INFINITY, f32::NEG_INFINITY);
    for c in contours {
        for i in 0..c.len() {
            let (a, b) = (c[i], c[(i + 1) % c.len()]);
            if a[1] == b[1] {
                continue;
            }
            let (p, q) = if a[1] < b[1] { (a, b) } else { (b, a) };
            edges.push(Edge { y0: p[1], y1: q[1], x0: p[0], dxdy: (q[0] - p[0]) / (q[1] - p[1]) });
            ymin = ymin.min(p[1]);
            ymax = ymax.max(q[1]);
        }
    }
    if edges.is_empty() || !(ymin.is_finite() && ymax.is_finite()) {
        return;
    }
    let row0 = (ymin - 0.5).ceil().max(0.0) as usize;
    let row1 = ((ymax - 0.5).ceil().max(0.0) as usize).min(n);
    let mut xs: Vec<f32> = Vec::with_capacity(16);
    for y in row0..row1 {
        let yc = y as f32 + 0.5;
        xs.clear();
        xs.extend(edges.iter().filter(|e| yc >= e.y0 && yc < e.y1).map(|e| e.x0 + (yc - e.y0) * e.dxdy));
        xs.sort_by(|a, b| a.total_cmp(b));
        for pair in xs.chunks_exact(2) {
            // Pixels x with pair[0] <= x + 0.5 < pair[1].
            let xa = (pair[0] - 0.5).ceil().clamp(0.0, n as f32) as usize;
            let xb = (pair[1] - 0.5).ceil().clamp(0.0, n as f32) as usize;
            for x in xa..xb {
                f(x, y);
            }
        }
    }
}

/// How an object's interior is coloured, in its own (rotated) frame.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Texture {
    Solid,
    /// Bands of `period` pixels at angle `(cos, sin)` to the object's axes.
    Stripes {
        period: f32,
        cos: f32,
        sin: f32,
    },
    /// Squares of `cell` pixels.
    Checker {
        cell: f32,
    },
    /// Per-pixel noise of amplitude `amp` around the main colour.
    Noise {
        amp: f32,
    },
}

/// A texture with its two colours and a noise seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Paint {
    pub texture: Texture,
    pub c1: [f32; 3],
    pub c2: [f32; 3],
    pub seed: u32,
}

impl Paint {
    /// A random paint: texture kind uniform over the four, with main colour `c1`.
    pub fn random(rng: &mut Rng, c1: [f32; 3], size: f32) -> Paint {
        let texture = match rng.below(4) {
            0 => Texture::Solid,
            1 => {
                let a = unif(rng, 0.0, std::f32::consts::PI);
                Texture::Stripes { period: unif(rng, 3.0, (size / 3.0).max(4.0)), cos: a.cos(), sin: a.sin() }
            }
            2 => Texture::Checker { cell: unif(rng, 2.0, (size / 4.0).max(3.0)) },
            _ => Texture::Noise { amp: unif(rng, 20.0, 70.0) },
        };
        let c2 = random_colour(rng, (0.2, 1.0), (0.1, 1.0));
        Paint { texture, c1, c2, seed: rng.next_u64() as u32 }
    }

    /// The colour at local coordinates `(u, v)` of pixel number `p`.
    #[inline]
    pub fn at(&self, u: f32, v: f32, p: u32) -> [u8; 3] {
        let c = match self.texture {
            Texture::Solid => self.c1,
            Texture::Stripes { period, cos, sin } => {
                let t = (u * cos + v * sin) / period;
                if t - floor(t) < 0.5 {
                    self.c1
                } else {
                    self.c2
                }
            }
            Texture::Checker { cell } => {
                if (floor(u / cell) as i32 + floor(v / cell) as i32) & 1 == 0 {
                    self.c1
                } else {
                    self.c2
                }
            }
            Texture::Noise { amp } => {
                let h = hash32(p ^ self.seed);
                let d = ((h & 0xff) as f32 / 255.0 - 0.5) * amp;
                [self.c1[0] + d, self.c1[1] + d, self.c1[2] + d]
            }
        };
        [to_u8(c[0]), to_u8(c[1]), to_u8(c[2])]
    }
}

/// Paint a cluttered background: a `g x g` grid of random colours interpolated bilinearly (g = 2
/// is a four-corner gradient, larger g gives blotches), plus per-pixel noise.
pub(crate) fn background(rng: &mut Rng, n: usize) -> Canvas {
    let g = [2usize, 2, 3, 4, 6][rng.below(5) as usize];
    let grid: Vec<[f32; 3]> = (0..g * g).map(|_| random_colour(rng, (0.0, 0.8), (0.15, 0.95))).collect();
    let amp = [0.0f32, 8.0, 20.0, 40.0][rng.below(4) as usize];
    let seed = rng.next_u64() as u32;
    let mut px = vec![0u8; n * n * 3];
    let cell = n as f32 / (g - 1) as f32;
    // Grid column and weight of every pixel column, computed once (the hot loop is per pixel).
    let at = |i: usize| {
        let t = ((i as f32 + 0.5) / cell).min((g - 1) as f32 - 1e-3);
        (t as usize, t - (t as usize) as f32)
    };
    let cols: Vec<(usize, f32)> = (0..n).map(at).collect();
    let mut line_grid = vec![[0f32; 3]; g];
    for y in 0..n {
        // This row's colours at the grid columns, then linear along x between them.
        let (j, fy) = at(y);
        for (i, lg) in line_grid.iter_mut().enumerate() {
            let (a, b) = (grid[j * g + i], grid[(j + 1) * g + i]);
            *lg = [a[0] + (b[0] - a[0]) * fy, a[1] + (b[1] - a[1]) * fy, a[2] + (b[2] - a[2]) * fy];
        }
        let line = &mut px[y * n * 3..(y + 1) * n * 3];
        // Noise from a xorshift stream seeded per row: three shifts a pixel, no multiply.
        let mut state = hash32(seed ^ (y as u32).wrapping_mul(0x9E37_79B9)) | 1;
        let (scale, offset) = (amp / 255.0, -0.5 * amp);
        for (out, &(i, fx)) in line.chunks_exact_mut(3).zip(&cols) {
            let (a, b) = (line_grid[i], line_grid[i + 1]);
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let d = (state & 0xff) as f32 * scale + offset;
            out[0] = to_u8(a[0] + (b[0] - a[0]) * fx + d);
            out[1] = to_u8(a[1] + (b[1] - a[1]) * fx + d);
            out[2] = to_u8(a[2] + (b[2] - a[2]) * fx + d);
        }
    }
    Canvas { n, px }
}

/// The quad of a thick segment from `a` to `b`.
fn segment_quad(a: [f32; 2], b: [f32; 2], half: f32) -> Vec<[f32; 2]> {
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let len = (dx * dx + dy * dy).sqrt().max(1e-3);
    let (nx, ny) = (-dy / len * half, dx / len * half);
    vec![[a[0] + nx, a[1] + ny], [b[0] + nx, b[1] + ny], [b[0] - nx, b[1] - ny], [a[0] - nx, a[1] - ny]]
}

/// Distractors that are not objects: straight lines, scribbles (polylines) and soft blobs.
/// Drawn before the objects, so they clutter the background but never hide a labelled pixel.
pub(crate) fn distractors(rng: &mut Rng, c: &mut Canvas) {
    let n = c.n as f32;
    let count = rng.below(7) as usize;
    for _ in 0..count {
        let col = random_colour(rng, (0.0, 1.0), (0.05, 1.0));
        let rgb = [to_u8(col[0]), to_u8(col[1]), to_u8(col[2])];
        match rng.below(3) {
            0 | 1 => {
                // A line (kind 0) or a scribble of a few segments (kind 1).
                let segments = 1 + rng.below(4) as usize;
                let half = unif(rng, 0.5, 2.0);
                let mut a = [unif(rng, 0.0, n), unif(rng, 0.0, n)];
                for _ in 0..segments {
                    let b = [unif(rng, -0.1 * n, 1.1 * n), unif(rng, -0.1 * n, 1.1 * n)];
                    let b = [a[0] + (b[0] - a[0]) * 0.5, a[1] + (b[1] - a[1]) * 0.5];
                    fill_polygon(&[segment_quad(a, b, half)], c.n, |x, y| {
                        c.px[(y * c.n + x) * 3..(y * c.n + x) * 3 + 3].copy_from_slice(&rgb);
                    });
                    a = b;
                }
            }
            _ => blob(rng, c, col),
        }
    }
}

/// A soft-edged elliptical blob blended into the canvas: no hard outline, so it is not a shape.
fn blob(rng: &mut Rng, c: &mut Canvas, col: [f32; 3]) {
    let n = c.n as f32;
    let (cx, cy) = (unif(rng, 0.0, n), unif(rng, 0.0, n));
    let (rx, ry) = (unif(rng, 0.04, 0.2) * n, unif(rng, 0.04, 0.2) * n);
    let alpha = unif(rng, 0.3, 0.8);
    let x0 = (cx - rx).max(0.0) as usize;
    let x1 = ((cx + rx).ceil().max(0.0) as usize).min(c.n);
    let y0 = (cy - ry).max(0.0) as usize;
    let y1 = ((cy + ry).ceil().max(0.0) as usize).min(c.n);
    for y in y0..y1 {
        let dy = (y as f32 + 0.5 - cy) / ry;
        for x in x0..x1 {
            let dx = (x as f32 + 0.5 - cx) / rx;
            let d2 = dx * dx + dy * dy;
            if d2 < 1.0 {
                let a = alpha * (1.0 - d2) * (1.0 - d2);
                let p = &mut c.px[(y * c.n + x) * 3..(y * c.n + x) * 3 + 3];
                for k in 0..3 {
                    p[k] = to_u8(p[k] as f32 + (col[k] - p[k] as f32) * a);
                }
            }
        }
    }
}
