//! A small SVG line plot (loss curves), written by hand so the project needs no plotting crate.

use std::path::Path;

use ela_core::{Error, Result};

/// One named series of (x, y) points.
pub struct Series<'a> {
    /// Legend label.
    pub label: &'a str,
    /// Points; non-finite y values are skipped.
    pub points: &'a [(f64, f64)],
    /// Stroke colour (any SVG colour).
    pub color: &'a str,
}

fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= n as f64).unwrap_or(10.0 * mag);
    let start = (lo / step).ceil() * step;
    (0..).map(|i| start + i as f64 * step).take_while(|v| *v <= hi + 1e-9 * span).collect()
}

/// Render an SVG document with axes, ticks, a legend and one polyline per series.
pub fn svg(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, ml, mr, mt, mb) = (720.0, 440.0, 70.0, 20.0, 40.0, 50.0);
    let pts: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.1.is_finite()).collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if pts.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = 0.05 * (y1 - y0);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let sx = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let sy = |y: f64| h - mb - (y - y0) / (y1 - y0) * (h - mt - mb);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        w / 2.0
    );
    for t in nice_ticks(y0, y1, 6) {
        s += &format!(
            "<line x1=\"{ml}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{t}</text>\n",
            w - mr,
            ml - 6.0,
            sy(t) + 4.0,
            y = sy(t)
        );
    }
    for t in nice_ticks(x0, x1, 8) {
        s += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t}</text>\n", sx(t), h - mb + 18.0);
    }
    s += &format!(
        "<line x1=\"{ml}\" x2=\"{ml}\" y1=\"{mt}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{ml}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - mb,
        w - mr,
        h - mb,
        h - mb
    );
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\n", (ml + w - mr) / 2.0, h - 10.0);
    s += &format!(
        "<text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{y_label}</text>\n",
        (mt + h - mb) / 2.0,
        (mt + h - mb) / 2.0
    );
    for (i, se) in series.iter().enumerate() {
        let path: Vec<String> =
            se.points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            se.color,
            path.join(" ")
        );
        let ly = mt + 14.0 + 16.0 * i as f64;
        s += &format!(
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            w - mr - 150.0,
            w - mr - 130.0,
            se.color,
            w - mr - 125.0,
            ly + 4.0,
            se.label
        );
    }
    s + "</svg>\n"
}

/// Write [`svg`] to `path`.
pub fn write_svg(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    std::fs::write(path, svg(title, x_label, y_label, series))
        .map_err(|e| Error::Io { path: path.display().to_string(), msg: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_series() {
        let a = [(0.0, 3.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 1.0)];
        let b = [(0.0, 2.5)];
        let s = svg(
            "t",
            "x",
            "y",
            &[Series { label: "train", points: &a, color: "red" }, Series { label: "val", points: &b, color: "blue" }],
        );
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains(">train<") && s.contains(">val<") && !s.contains("NaN"));
        assert_eq!(nice_ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
    }
}
