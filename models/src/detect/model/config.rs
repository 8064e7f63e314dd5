//! The detector's switches: which architecture, how many classes, which input size.
//!
//! Names are what the CLI accepts and what [`DetectorConfig::to_pairs`] writes into checkpoint
//! metadata: architectures `yolo-lat`, `yolov8n`; YOLO-LAT necks `ela` (Hadamard-Exp ELA, the
//! default), `ela:<kernel>` (any built-in ELA kernel, e.g. `ela:sum-sq-euclid`), `softmax`, `conv`
//! and `none`.

use std::fmt;
use std::str::FromStr;

use ela_core::{ElaKernel, Error, Result};

/// The token mixer in YOLO-LAT's neck (the ablation switch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neck {
    /// Non-causal Exact Linear Attention over the stride-16 cells with this kernel (the paper's
    /// "HadamardAttention2D" for [`ElaKernel::HadamardExp`]).
    Ela(ElaKernel),
    /// The same block with softmax attention: quadratic in the number of cells.
    Softmax,
    /// The attention replaced by three depthwise-separable 3x3 convolutions 64->64 of about the
    /// same parameters and multiply-adds (local mixing only).
    Conv,
    /// No mixer: only the 1x1 reduce/expand convolutions and the skip remain.
    None,
}

impl Default for Neck {
    fn default() -> Self {
        Neck::Ela(ElaKernel::HadamardExp)
    }
}

impl fmt::Display for Neck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Neck::Ela(ElaKernel::HadamardExp) => f.write_str("ela"),
            Neck::Ela(k) => write!(f, "ela:{k}"),
            Neck::Softmax => f.write_str("softmax"),
            Neck::Conv => f.write_str("conv"),
            Neck::None => f.write_str("none"),
        }
    }
}

impl FromStr for Neck {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "ela" => Neck::Ela(ElaKernel::HadamardExp),
            "softmax" => Neck::Softmax,
            "conv" => Neck::Conv,
            "none" => Neck::None,
            _ => match s.strip_prefix("ela:") {
                Some(k) => Neck::Ela(k.parse()?),
                None => {
                    return Err(Error::invalid(
                        "Neck",
                        format!("unknown neck {s:?}; expected ela, ela:<kernel>, softmax, conv or none"),
                    ))
                }
            },
        })
    }
}

/// Which network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// YOLO-LAT: depthwise-separable backbone to stride 16, an attention neck, one output scale.
    YoloLat {
        /// The neck's mixer.
        neck: Neck,
    },
    /// The YOLOv8n architecture (C2f backbone, SPPF, PAN, decoupled heads at strides 8, 16, 32),
    /// with YOLO-LAT's objectness/box/class output in place of the DFL box head.
    YoloV8n,
}

impl Default for Arch {
    fn default() -> Self {
        Arch::YoloLat { neck: Neck::default() }
    }
}

impl fmt::Display for Arch {
    /// The CLI name (`yolo-lat`, `yolov8n`); the neck is a separate switch.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::YoloLat { .. } => "yolo-lat",
            Arch::YoloV8n => "yolov8n",
        })
    }
}

impl FromStr for Arch {
    type Err = Error;
    /// `yolo-lat` (with the default ELA neck) or `yolov8n`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "yolo-lat" => Ok(Arch::YoloLat { neck: Neck::default() }),
            "yolov8n" => Ok(Arch::YoloV8n),
            _ => Err(Error::invalid("Arch", format!("unknown architecture {s:?}; expected yolo-lat or yolov8n"))),
        }
    }
}

/// Every switch of [`super::Detector`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// The network.
    pub arch: Arch,
    /// Number of object classes (>= 1).
    pub num_classes: usize,
    /// Side of the square network input in pixels, a multiple of 32. The forward pass accepts any
    /// multiple of 32; this is the training size and the size FLOPs are counted at.
    pub input_size: usize,
}

impl fmt::Display for DetectorConfig {
    /// E.g. `yolo-lat (neck ela:hadamard-exp), 6 classes, 256x256 input`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.arch {
            Arch::YoloLat { neck } => write!(f, "yolo-lat (neck {neck})")?,
            Arch::YoloV8n => write!(f, "yolov8n")?,
        }
        write!(f, ", {} classes, {}x{} input", self.num_classes, self.input_size, self.input_size)
    }
}

impl Default for DetectorConfig {
    /// YOLO-LAT with the ELA neck, one class, 320x320.
    fn default() -> Self {
        DetectorConfig { arch: Arch::default(), num_classes: 1, input_size: 320 }
    }
}

/// The largest input size a detector configuration accepts (131072 = 32 x 4096; the cost
/// arithmetic of every neck, softmax attention over all positions included, stays in 64 bits).
pub const MAX_INPUT_SIZE: usize = 131_072;
/// The most classes a detector configuration accepts.
pub const MAX_CLASSES: usize = 1 << 20;

impl DetectorConfig {
    /// A configuration.
    pub fn new(arch: Arch, num_classes: usize, input_size: usize) -> Self {
        DetectorConfig { arch, num_classes, input_size }
    }

    /// Output strides, finest first: `[16]` for YOLO-LAT, `[8, 16, 32]` for YOLOv8n.
    pub fn strides(&self) -> &'static [usize] {
        match self.arch {
            Arch::YoloLat { .. } => &[16],
            Arch::YoloV8n => &[8, 16, 32],
        }
    }

    /// Check the switches (see [`MAX_INPUT_SIZE`], [`MAX_CLASSES`]).
    pub fn validate(&self) -> Result<()> {
        if self.num_classes == 0 {
            return Err(Error::invalid("DetectorConfig", "num_classes must be at least 1"));
        }
        if self.input_size == 0 || !self.input_size.is_multiple_of(32) {
            return Err(Error::invalid(
                "DetectorConfig",
                format!("input_size must be a positive multiple of 32, got {}", self.input_size),
            ));
        }
        // Caps far above any real use (COCO models run at 640 with 80 classes) that keep the
        // cost arithmetic of `component_report` (pixels x channels x kernel taps) inside 64
        // bits, so `ela info` can count any accepted configuration exactly.
        if self.input_size > MAX_INPUT_SIZE || self.num_classes > MAX_CLASSES {
            return Err(Error::invalid(
                "DetectorConfig",
                format!(
                    "input_size {} and num_classes {} must be at most {MAX_INPUT_SIZE} and {MAX_CLASSES}",
                    self.input_size, self.num_classes
                ),
            ));
        }
        Ok(())
    }

    /// The configuration as `(key, value)` strings for checkpoint metadata: `model.arch`,
    /// `model.neck` (YOLO-LAT only), `model.num_classes`, `model.input_size`.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut v = vec![("arch", self.arch.to_string())];
        if let Arch::YoloLat { neck } = self.arch {
            v.push(("neck", neck.to_string()));
        }
        v.push(("num_classes", self.num_classes.to_string()));
        v.push(("input_size", self.input_size.to_string()));
        v.into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect()
    }

    /// Read a configuration written by [`DetectorConfig::to_pairs`].
    pub fn from_pairs(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let field = |k: &str| {
            get(&format!("model.{k}")).ok_or_else(|| Error::invalid("DetectorConfig", format!("missing key model.{k}")))
        };
        let num = |k: &str| -> Result<usize> {
            let v = field(k)?;
            v.parse().map_err(|_| Error::invalid("DetectorConfig", format!("model.{k}: cannot parse {v:?}")))
        };
        let arch = match field("arch")?.parse()? {
            Arch::YoloLat { .. } => Arch::YoloLat { neck: field("neck")?.parse()? },
            a => a,
        };
        let cfg = DetectorConfig { arch, num_classes: num("num_classes")?, input_size: num("input_size")? };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in ["ela", "ela:sum-sq-euclid", "ela:blueprint", "softmax", "conv", "none"] {
            assert_eq!(n.parse::<Neck>().unwrap().to_string(), n);
        }
        assert_eq!("ela:hadamard-exp".parse::<Neck>().unwrap(), Neck::default());
        assert!("ela:nope".parse::<Neck>().is_err() && "attn".parse::<Neck>().is_err());
        for a in ["yolo-lat", "yolov8n"] {
            assert_eq!(a.parse::<Arch>().unwrap().to_string(), a);
        }
        assert!("yolov5".parse::<Arch>().is_err());
    }

    #[test]
    fn pairs_round_trip() {
        let necks = [Neck::default(), Neck::Ela(ElaKernel::SubSqEuclid), Neck::Softmax, Neck::Conv, Neck::None];
        let mut cfgs: Vec<_> = necks.iter().map(|&neck| DetectorConfig::new(Arch::YoloLat { neck }, 3, 256)).collect();
        cfgs.push(DetectorConfig::new(Arch::YoloV8n, 80, 640));
        for cfg in cfgs {
            let pairs = cfg.to_pairs();
            let back = DetectorConfig::from_pairs(|k| pairs.iter().find(|p| p.0 == k).map(|p| p.1.clone())).unwrap();
            assert_eq!(back, cfg);
        }
        assert!(DetectorConfig::from_pairs(|_| None).is_err());
        assert!(DetectorConfig::new(Arch::YoloV8n, 1, 100).validate().is_err());
        assert!(DetectorConfig::new(Arch::YoloV8n, 0, 64).validate().is_err());
    }
}
