//! The YOLOv8n architecture (ultralytics `yolov8.yaml` at scale `n`: depth 0.33, width 0.25) as a
//! conv baseline, in our engine.
//!
//! ```text
//! backbone  0 Conv 3x3 s2 3->16     1 Conv s2 16->32    2 C2f(32, n=1, shortcut)
//!           3 Conv s2 32->64        4 C2f(64, n=2, shortcut)            -> P3 (stride 8)
//!           5 Conv s2 64->128       6 C2f(128, n=2, shortcut)           -> P4 (stride 16)
//!           7 Conv s2 128->256      8 C2f(256, n=1, shortcut)   9 SPPF(256, k=5) -> P5 (32)
//! neck      12 C2f(up(P5) ++ P4 -> 128)      15 C2f(up(12) ++ P3 -> 64)        = N3
//!           16 Conv s2 64->64; 18 C2f(16 ++ 12 -> 128)                          = N4
//!           19 Conv s2 128->128; 21 C2f(19 ++ P5 -> 256)                        = N5
//! head      per scale, decoupled: box branch Conv3x3 ch->c2, Conv3x3 c2->c2, 1x1 -> 5
//!                                 class branch Conv3x3 ch->c3, Conv3x3 c3->c3, 1x1 -> nc
//!           c2 = max(16, ch_P3/4, 64) = 64, c3 = max(ch_P3, min(nc, 100))
//! ```
//!
//! (`++` is channel concatenation, `up` nearest 2x upsampling; C2f: a 1x1 conv to `2c`, split in
//! two halves, `n` bottlenecks (two 3x3 convs, residual when `shortcut`) each fed the previous
//! output, all `2 + n` pieces concatenated and mixed by a 1x1 conv. SPPF: 1x1 conv to `c/2`,
//! three chained 5x5 stride-1 max-pools, the four maps concatenated, 1x1 conv.) Parameter names
//! follow ultralytics' module names (`backbone.2.m.0.cv1.conv.weight`, `head.cv3.1.0.bn.bias`) with
//! its layer indices, so weights could be mapped one to one.
//!
//! # The head: what differs from ultralytics
//! Ultralytics' box branch ends in `4 reg_max = 64` channels, a distribution over 16 distances per
//! side decoded by the fixed DFL convolution, trained with a task-aligned assigner. Ours ends in 5
//! channels, objectness and YOLO-LAT's 4 box numbers ([`super::output`]), trained by the same loss
//! as YOLO-LAT ([`super::loss`]) so that the two architectures are compared on equal terms. Every
//! other layer is the real YOLOv8n. [`yolov8n_reference_params`] counts the real (DFL) model: at
//! 80 classes 3,157,200 parameters (ultralytics' own summary), of which our head drops
//! `3 x (64 - 5) x 65` and the DFL's 16 fixed weights.

use ela_autograd::Var;
use ela_core::{Backend, Pool2dParams, Result};
use ela_nn::layers::Conv2d;
use ela_nn::module::ParamStore;

use super::layers::{conv1x1_with_bias, conv_bn_act_cost, conv_cost, ConvBnAct, Cost};
use super::output::{prediction_bias, BOX, CLS};

/// Widths after layers 0, 1, 3, 5, 7 (64, 128, 256, 512, 1024 times 0.25).
const W: [usize; 5] = [16, 32, 64, 128, 256];
/// Ultralytics' DFL bins per box side.
const REG_MAX: usize = 16;

/// Cross-stage bottleneck with two convolutions (`C2f`).
struct C2f<B: Backend> {
    cv1: ConvBnAct<B>,
    cv2: ConvBnAct<B>,
    /// Bottlenecks: (cv1, cv2); residual when `shortcut`.
    m: Vec<(ConvBnAct<B>, ConvBnAct<B>)>,
    shortcut: bool,
}

impl<B: Backend> Clone for C2f<B> {
    fn clone(&self) -> Self {
        C2f { cv1: self.cv1.clone(), cv2: self.cv2.clone(), m: self.m.clone(), shortcut: self.shortcut }
    }
}

impl<B: Backend> C2f<B> {
    fn new(vs: &ParamStore<B>, c1: usize, c2: usize, n: usize, shortcut: bool) -> Result<Self> {
        let c = c2 / 2;
        let m = (0..n)
            .map(|i| {
                let b = vs.sub("m").sub(i);
                Ok((ConvBnAct::new(&b.sub("cv1"), c, c, 3, 1, 1)?, ConvBnAct::new(&b.sub("cv2"), c, c, 3, 1, 1)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(C2f {
            cv1: ConvBnAct::new(&vs.sub("cv1"), c1, 2 * c, 1, 1, 1)?,
            cv2: ConvBnAct::new(&vs.sub("cv2"), (2 + n) * c, c2, 1, 1, 1)?,
            m,
            shortcut,
        })
    }

    fn forward(&self, x: &Var<B>, train: bool) -> Result<Var<B>> {
        let mut ys = self.cv1.forward(x, train)?.chunk(2, 1usize)?;
        for (a, b) in &self.m {
            let last = ys.last().expect("two halves");
            let y = b.forward(&a.forward(last, train)?, train)?;
            ys.push(if self.shortcut { last.add(&y)? } else { y });
        }
        self.cv2.forward(&Var::concat(&ys.iter().collect::<Vec<_>>(), 1usize)?, train)
    }

    fn fuse(&self) -> Result<Self> {
        Ok(C2f {
            cv1: self.cv1.fuse_for_inference()?,
            cv2: self.cv2.fuse_for_inference()?,
            m: self
                .m
                .iter()
                .map(|(a, b)| Ok((a.fuse_for_inference()?, b.fuse_for_inference()?)))
                .collect::<Result<_>>()?,
            shortcut: self.shortcut,
        })
    }
}

/// Cost of a [`C2f`] on an `hw` map.
fn c2f_cost(c1: usize, c2: usize, n: usize, hw: (usize, usize)) -> Cost {
    let c = c2 / 2;
    let conv = |a, b, k| conv_bn_act_cost(a, b, k, 1, 1, hw).0;
    conv(c1, 2 * c, 1) + conv((2 + n) * c, c2, 1) + (0..n).map(|_| conv(c, c, 3) + conv(c, c, 3)).sum::<Cost>()
}

/// Spatial pyramid pooling, fast: three chained 5x5 max-pools (receptive fields 5, 9, 13).
struct Sppf<B: Backend> {
    cv1: ConvBnAct<B>,
    cv2: ConvBnAct<B>,
}

const POOL: Pool2dParams = Pool2dParams { kernel: (5, 5), stride: (1, 1), padding: (2, 2), count_include_pad: false };

/// One scale's decoupled head: box branch (`cv2.i`) and class branch (`cv3.i`).
struct HeadLevel<B: Backend> {
    box_convs: [ConvBnAct<B>; 2],
    box_pred: Conv2d<B>,
    cls_convs: [ConvBnAct<B>; 2],
    cls_pred: Conv2d<B>,
}

impl<B: Backend> Clone for HeadLevel<B> {
    fn clone(&self) -> Self {
        HeadLevel {
            box_convs: self.box_convs.clone(),
            box_pred: self.box_pred.clone(),
            cls_convs: self.cls_convs.clone(),
            cls_pred: self.cls_pred.clone(),
        }
    }
}

/// Box- and class-branch widths of the head for `nc` classes (ultralytics' `Detect`).
fn head_widths(nc: usize) -> (usize, usize) {
    ((16usize).max(W[2] / 4).max(4 * REG_MAX), W[2].max(nc.min(100)))
}

/// The YOLOv8n network (see the module docs).
pub struct YoloV8n<B: Backend> {
    /// Layers 0..=8 except the C2f ones: the strided convs 0, 1, 3, 5, 7.
    down: Vec<ConvBnAct<B>>,
    /// C2f layers 2, 4, 6, 8.
    stages: Vec<C2f<B>>,
    sppf: Sppf<B>,
    /// Neck C2f layers 12, 15, 18, 21 and strided convs 16, 19.
    pan: Vec<C2f<B>>,
    pan_down: Vec<ConvBnAct<B>>,
    head: Vec<HeadLevel<B>>,
}

impl<B: Backend> Clone for YoloV8n<B> {
    fn clone(&self) -> Self {
        YoloV8n {
            down: self.down.clone(),
            stages: self.stages.clone(),
            sppf: Sppf { cv1: self.sppf.cv1.clone(), cv2: self.sppf.cv2.clone() },
            pan: self.pan.clone(),
            pan_down: self.pan_down.clone(),
            head: self.head.clone(),
        }
    }
}

/// `(c_in, c_out, n, shortcut)` of C2f layers 2, 4, 6, 8 and of the neck's 12, 15, 18, 21.
const STAGES: [(usize, usize, usize); 4] = [(W[1], W[1], 1), (W[2], W[2], 2), (W[3], W[3], 2), (W[4], W[4], 1)];
const PAN: [(usize, usize); 4] = [(W[4] + W[3], W[3]), (W[3] + W[2], W[2]), (W[2] + W[3], W[3]), (W[3] + W[4], W[4])];
const PAN_IDX: [usize; 4] = [12, 15, 18, 21];

impl<B: Backend> YoloV8n<B> {
    /// Register every parameter under `vs`.
    pub fn new(vs: &ParamStore<B>, num_classes: usize) -> Result<Self> {
        let bb = vs.sub("backbone");
        let down_io = [(3, W[0]), (W[0], W[1]), (W[1], W[2]), (W[2], W[3]), (W[3], W[4])];
        let down = [0, 1, 3, 5, 7]
            .iter()
            .zip(down_io)
            .map(|(&i, (a, b))| ConvBnAct::new(&bb.sub(i), a, b, 3, 2, 1))
            .collect::<Result<Vec<_>>>()?;
        let stages = [2, 4, 6, 8]
            .iter()
            .zip(STAGES)
            .map(|(&i, (a, b, n))| C2f::new(&bb.sub(i), a, b, n, true))
            .collect::<Result<Vec<_>>>()?;
        let s9 = bb.sub(9);
        let sppf = Sppf {
            cv1: ConvBnAct::new(&s9.sub("cv1"), W[4], W[4] / 2, 1, 1, 1)?,
            cv2: ConvBnAct::new(&s9.sub("cv2"), 2 * W[4], W[4], 1, 1, 1)?,
        };
        let nk = vs.sub("neck");
        let pan = PAN_IDX
            .iter()
            .zip(PAN)
            .map(|(&i, (a, b))| C2f::new(&nk.sub(i), a, b, 1, false))
            .collect::<Result<Vec<_>>>()?;
        let pan_down =
            vec![ConvBnAct::new(&nk.sub(16), W[2], W[2], 3, 2, 1)?, ConvBnAct::new(&nk.sub(19), W[3], W[3], 3, 2, 1)?];
        let (c2, c3) = head_widths(num_classes);
        let bias = prediction_bias(num_classes);
        let hd = vs.sub("head");
        let head = [W[2], W[3], W[4]]
            .iter()
            .enumerate()
            .map(|(i, &ch)| {
                let (bx, cl) = (hd.sub("cv2").sub(i), hd.sub("cv3").sub(i));
                Ok(HeadLevel {
                    box_convs: [
                        ConvBnAct::new(&bx.sub(0), ch, c2, 3, 1, 1)?,
                        ConvBnAct::new(&bx.sub(1), c2, c2, 3, 1, 1)?,
                    ],
                    box_pred: conv1x1_with_bias(&bx.sub(2), c2, &bias[..CLS])?,
                    cls_convs: [
                        ConvBnAct::new(&cl.sub(0), ch, c3, 3, 1, 1)?,
                        ConvBnAct::new(&cl.sub(1), c3, c3, 3, 1, 1)?,
                    ],
                    cls_pred: conv1x1_with_bias(&cl.sub(2), c3, &bias[CLS..])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(YoloV8n { down, stages, sppf, pan, pan_down, head })
    }

    /// `x [n, 3, H, W]` to `[n, 5 + nc, H/s, W/s]` for strides 8, 16, 32.
    pub fn forward(&self, x: &Var<B>, train: bool) -> Result<Vec<Var<B>>> {
        let mut f = self.down[0].forward(x, train)?;
        let mut taps = Vec::new();
        for (d, c) in self.down[1..].iter().zip(&self.stages) {
            f = c.forward(&d.forward(&f, train)?, train)?;
            taps.push(f.clone());
        }
        // SPPF on the last stage: y0 = cv1(x), y1..y3 = pool(previous).
        let mut ys = vec![self.sppf.cv1.forward(&f, train)?];
        for _ in 0..3 {
            ys.push(ys.last().expect("nonempty").max_pool2d(&POOL)?);
        }
        let p5 = self.sppf.cv2.forward(&Var::concat(&ys.iter().collect::<Vec<_>>(), 1usize)?, train)?;
        let (p3, p4) = (&taps[1], &taps[2]);
        let cat = |a: &Var<B>, b: &Var<B>| Var::concat(&[a, b], 1usize);
        let up = |a: &Var<B>| a.upsample_nearest2d((2, 2));
        let h4 = self.pan[0].forward(&cat(&up(&p5)?, p4)?, train)?;
        let n3 = self.pan[1].forward(&cat(&up(&h4)?, p3)?, train)?;
        let n4 = self.pan[2].forward(&cat(&self.pan_down[0].forward(&n3, train)?, &h4)?, train)?;
        let n5 = self.pan[3].forward(&cat(&self.pan_down[1].forward(&n4, train)?, &p5)?, train)?;
        [n3, n4, n5]
            .iter()
            .zip(&self.head)
            .map(|(f, h)| {
                let bx = h.box_pred.forward(&h.box_convs[1].forward(&h.box_convs[0].forward(f, train)?, train)?)?;
                let cl = h.cls_pred.forward(&h.cls_convs[1].forward(&h.cls_convs[0].forward(f, train)?, train)?)?;
                cat(&bx, &cl)
            })
            .collect()
    }

    /// The network with every conv + batch-norm pair folded (eval only).
    pub fn fuse_for_inference(&self) -> Result<Self> {
        let fuse_all = |v: &[ConvBnAct<B>]| v.iter().map(|c| c.fuse_for_inference()).collect::<Result<Vec<_>>>();
        let fuse2 = |v: &[ConvBnAct<B>; 2]| -> Result<[ConvBnAct<B>; 2]> {
            Ok([v[0].fuse_for_inference()?, v[1].fuse_for_inference()?])
        };
        Ok(YoloV8n {
            down: fuse_all(&self.down)?,
            stages: self.stages.iter().map(|s| s.fuse()).collect::<Result<_>>()?,
            sppf: Sppf { cv1: self.sppf.cv1.fuse_for_inference()?, cv2: self.sppf.cv2.fuse_for_inference()? },
            pan: self.pan.iter().map(|s| s.fuse()).collect::<Result<_>>()?,
            pan_down: fuse_all(&self.pan_down)?,
            head: self
                .head
                .iter()
                .map(|h| {
                    Ok(HeadLevel {
                        box_convs: fuse2(&h.box_convs)?,
                        box_pred: h.box_pred.clone(),
                        cls_convs: fuse2(&h.cls_convs)?,
                        cls_pred: h.cls_pred.clone(),
                    })
                })
                .collect::<Result<_>>()?,
        })
    }
}

/// Parameters and multiply-adds of `(backbone, neck, head)` for a `size x size` input, from the
/// architecture alone. `box_outputs` is the box branch's last width: 5 for ours
/// (objectness + 4), `4 reg_max = 64` for ultralytics' DFL head (whose fixed DFL weights are
/// not counted here).
pub fn yolov8n_cost(num_classes: usize, size: usize, box_outputs: usize) -> [Cost; 3] {
    let hw = |s: usize| (size / s, size / s);
    let mut backbone = Cost::default();
    for (i, (a, b)) in [(3, W[0]), (W[0], W[1]), (W[1], W[2]), (W[2], W[3]), (W[3], W[4])].into_iter().enumerate() {
        backbone += conv_bn_act_cost(a, b, 3, 2, 1, hw(1 << i)).0;
        if i > 0 {
            let (c1, c2, n) = STAGES[i - 1];
            backbone += c2f_cost(c1, c2, n, hw(2 << i));
        }
    }
    backbone +=
        conv_bn_act_cost(W[4], W[4] / 2, 1, 1, 1, hw(32)).0 + conv_bn_act_cost(2 * W[4], W[4], 1, 1, 1, hw(32)).0;
    let neck = PAN.iter().zip([16, 8, 16, 32]).map(|(&(a, b), s)| c2f_cost(a, b, 1, hw(s))).sum::<Cost>()
        + conv_bn_act_cost(W[2], W[2], 3, 2, 1, hw(8)).0
        + conv_bn_act_cost(W[3], W[3], 3, 2, 1, hw(16)).0;
    let (c2, c3) = head_widths(num_classes);
    let head = [(W[2], 8), (W[3], 16), (W[4], 32)]
        .iter()
        .map(|&(ch, s)| {
            let conv = |a, b| conv_bn_act_cost(a, b, 3, 1, 1, hw(s)).0;
            conv(ch, c2)
                + conv(c2, c2)
                + conv_cost(c2, box_outputs, 1, 1, true, false, hw(s))
                + conv(ch, c3)
                + conv(c3, c3)
                + conv_cost(c3, num_classes, 1, 1, true, false, hw(s))
        })
        .sum();
    [backbone, neck, head]
}

/// Parameters of ultralytics' YOLOv8n with `nc` classes, DFL head included, counted the way its
/// model summary does (every `nn.Parameter`, the DFL convolution's 16 frozen weights too):
/// 3,157,200 at 80 classes.
pub fn yolov8n_reference_params(num_classes: usize) -> usize {
    yolov8n_cost(num_classes, 64, 4 * REG_MAX).iter().map(|c| c.params).sum::<usize>() + REG_MAX
}

/// Our YOLOv8n's box-branch output width (objectness + 4 box numbers).
pub(crate) const OUR_BOX_OUTPUTS: usize = BOX + 4;
