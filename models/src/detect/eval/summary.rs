//! The human-readable report of [`CocoMetrics`]: pycocotools' twelve `summarize()` lines,
//! character for character, then a per-class table.

use super::metrics::CocoMetrics;
use std::fmt::Write;

/// `(is AP, IoU label, area label, maxDets)` of each of pycocotools' twelve lines.
const LINES: [(bool, &str, &str, usize); 12] = [
    (true, "0.50:0.95", "all", 100),
    (true, "0.50", "all", 100),
    (true, "0.75", "all", 100),
    (true, "0.50:0.95", "small", 100),
    (true, "0.50:0.95", "medium", 100),
    (true, "0.50:0.95", "large", 100),
    (false, "0.50:0.95", "all", 1),
    (false, "0.50:0.95", "all", 10),
    (false, "0.50:0.95", "all", 100),
    (false, "0.50:0.95", "small", 100),
    (false, "0.50:0.95", "medium", 100),
    (false, "0.50:0.95", "large", 100),
];

/// A per-class cell: undefined values (-1) print as "-" rather than pycocotools' -1.000.
fn cell(v: f64) -> String {
    if v < 0.0 {
        "-".to_string()
    } else {
        format!("{v:.3}")
    }
}

impl CocoMetrics {
    /// pycocotools' twelve summary lines (same layout, -1.000 where undefined), then one row per
    /// class: ground-truth and detection counts, AP, AP50, AP75 and AR100 ("-" where the class
    /// has no ground truth). `class_names[i]` names class `i`; missing names print as `class i`.
    pub fn summary_table(&self, class_names: &[String]) -> String {
        let mut out = String::new();
        for ((is_ap, iou, area, max_dets), v) in LINES.iter().zip(self.stats()) {
            let (title, kind) = if *is_ap { ("Average Precision", "(AP)") } else { ("Average Recall", "(AR)") };
            // Mirrors ' {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}'.
            let _ = writeln!(
                out,
                " {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_dets:>3} ] = {v:.3}"
            );
        }
        let names: Vec<String> = self
            .per_class
            .iter()
            .map(|c| class_names.get(c.class).cloned().unwrap_or_else(|| format!("class {}", c.class)))
            .collect();
        let w = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(5);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<w$} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6}",
            "class", "gt", "dets", "AP", "AP50", "AP75", "AR100"
        );
        for (c, name) in self.per_class.iter().zip(&names) {
            let _ = writeln!(
                out,
                "{name:<w$} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6}",
                c.num_gt,
                c.num_dets,
                cell(c.ap),
                cell(c.ap50),
                cell(c.ap75),
                cell(c.ar100)
            );
        }
        out
    }
}
