//! The synthetic classes' geometry: each class as closed polygon contours around a centre, with
//! its random size, aspect and rotation. Every shape fits in the circle of diameter `extent`, so
//! `extent` bounds its box at any rotation (rectangles and crosses put their corners on that
//! circle). Circles and rings are fine regular polygons: filled at pixel centres they cover the
//! same pixels as the true curves almost everywhere, and one filler serves every class.

use ela_core::Rng;

use super::raster::unif;

/// A shape ready to fill: contours in image pixels, its centre, rotation and extent.
pub(crate) struct Shape {
    pub contours: Vec<Vec<[f32; 2]>>,
    pub cx: f32,
    pub cy: f32,
    pub cos: f32,
    pub sin: f32,
    pub extent: f32,
}

/// A regular polygon approximating an ellipse of radii `(rx, ry)`, fine enough that its pixels
/// are those of the true ellipse almost everywhere.
fn ellipse(rx: f32, ry: f32) -> Vec<[f32; 2]> {
    let k = (rx.max(ry) * 0.8).clamp(24.0, 72.0) as usize;
    (0..k)
        .map(|i| {
            let a = i as f32 / k as f32 * std::f32::consts::TAU;
            [rx * a.cos(), ry * a.sin()]
        })
        .collect()
}

/// Draw the geometry of a `class` object in an `n`-pixel image.
pub(crate) fn make_shape(class: usize, rng: &mut Rng, n: f32, min_size: f32, max_size: f32) -> Shape {
    // Extent log-uniform: as many small objects as large ones per octave, like real data.
    let extent = (unif(rng, min_size.ln(), max_size.ln())).exp() * n;
    let r = 0.5 * extent;
    let aspect = unif(rng, 0.7, 1.0);
    let local: Vec<Vec<[f32; 2]>> = match class {
        0 => vec![ellipse(r, r * unif(rng, 0.9, 1.0))],
        1 => {
            // Corners on the circle of radius r, so the extent bounds the box at any rotation.
            let a = unif(rng, 0.45, 1.0);
            let (w, h) = (r / (1.0 + a * a).sqrt(), a * r / (1.0 + a * a).sqrt());
            vec![vec![[-w, -h], [w, -h], [w, h], [-w, h]]]
        }
        2 => vec![(0..3)
            .map(|i| {
                let a = (i as f32 / 3.0 + unif(rng, -0.05, 0.05)) * std::f32::consts::TAU;
                let rr = r * unif(rng, 0.85, 1.0);
                [rr * a.sin(), -rr * a.cos() * aspect]
            })
            .collect()],
        3 => {
            let t = r * unif(rng, 0.2, 0.35);
            let l = (r * r - t * t).sqrt(); // arm corners on the circle of radius r
            let m = l * aspect.max(t / l + 0.1);
            vec![vec![
                [-t, -m],
                [t, -m],
                [t, -t],
                [l, -t],
                [l, t],
                [t, t],
                [t, m],
                [-t, m],
                [-t, t],
                [-l, t],
                [-l, -t],
                [-t, -t],
            ]]
        }
        4 => {
            let inner = unif(rng, 0.45, 0.7);
            vec![ellipse(r, r * aspect.max(0.85)), ellipse(r * inner, r * inner * aspect.max(0.85))]
        }
        _ => {
            let inner = r * unif(rng, 0.38, 0.5);
            vec![(0..10)
                .map(|i| {
                    let a = i as f32 / 10.0 * std::f32::consts::TAU;
                    let rr = if i % 2 == 0 { r } else { inner };
                    [rr * a.sin(), -rr * a.cos() * aspect.max(0.85)]
                })
                .collect()]
        }
    };
    let angle = unif(rng, 0.0, std::f32::consts::TAU);
    let (sin, cos) = angle.sin_cos();
    // Centre so that at most ~60% of the radius can leave the image: some truncation, as in photos.
    let cx = unif(rng, 0.4 * r, n - 0.4 * r);
    let cy = unif(rng, 0.4 * r, n - 0.4 * r);
    let contours = local
        .into_iter()
        .map(|c| c.into_iter().map(|[u, v]| [cx + u * cos - v * sin, cy + u * sin + v * cos]).collect())
        .collect();
    Shape { contours, cx, cy, cos, sin, extent }
}
