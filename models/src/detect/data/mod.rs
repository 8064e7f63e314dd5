//! Images and labels for the detector: an embedded synthetic set, COCO and YOLO readers,
//! letterboxing, seeded augmentation, batches, and drawing.
//!
//! # The API at a glance
//!
//! ```text
//! // datasets
//! pub struct Sample { pub image: RgbImage, pub objects: Vec<Object>, pub image_id: u64 }
//! pub trait DetectionSource: Send + Sync {
//!     fn len(&self) -> usize;  fn is_empty(&self) -> bool;
//!     fn class_names(&self) -> &[String];
//!     fn category_ids(&self) -> &[u64];            // COCO category id per class index
//!     fn image_id(&self, index: usize) -> u64;
//!     fn load(&self, index: usize) -> Result<Sample>;             // decode or render
//!     fn objects(&self, index: usize) -> Result<Vec<Object>>;     // labels only (cheap)
//!     fn describe(&self) -> String;
//! }
//! pub struct DatasetSplit { pub train: Box<dyn DetectionSource>, pub val: Box<dyn DetectionSource>,
//!                           pub skipped: SkipReport }
//! pub fn synthetic(cfg: &SynthConfig) -> Result<DatasetSplit>;    // the embedded default
//! pub fn open_dataset(path: &Path) -> Result<DatasetSplit>;       // COCO or YOLO, auto-detected
//! CocoSource::open(json, images_dir: Option<&Path>, &mut SkipReport) -> Result<CocoSource>
//! YoloSource::open(images_dir, labels_dir, names, &mut SkipReport) -> Result<YoloSource>
//! SynthSource::new(&SynthConfig, Split) / .render(i) -> SynthScene (image + bookkeeping)
//!
//! // network inputs
//! Letterbox::new(w, h, size)? / .map(BBox) / .unmap(BBox)    // original <-> input pixels
//! letterbox(&img, size) -> Result<(RgbImage, Letterbox)>;  warp(&img, &Letterbox) -> Result<RgbImage>
//! prepare(&img, &objects, size, Option<&AugmentConfig>, &mut Rng) -> Prepared { image, objects, transform }
//! make_batch(src, indices, size, Option<&AugmentConfig>, &mut Rng) -> Result<Batch>
//! batch_to_tensor(&batch, &dev) -> Result<Tensor<B>>      // f32 [n, 3, size, size]
//!
//! // output
//! draw_detections(&mut img, &dets, &names);  draw_objects(..);  save_png(path, &img) -> Result<()>
//! load_image(path) -> Result<RgbImage>
//! ```
//!
//! | module | holds |
//! |---|---|
//! | `source` | [`Sample`], [`DetectionSource`], [`DatasetSplit`], [`SkipReport`] |
//! | `synth`, `shapes`, `raster` | the synthetic set: scenes and labels; class geometry; polygon filling, textures, backgrounds |
//! | `open`, `coco`, `yolo`, `names` | finding and reading COCO and YOLO datasets, `data.yaml` names |
//! | `letterbox`, `augment`, `batch` | resampling into the network input, augmentation, batches |
//! | `draw`, `font`, `io` | boxes and labels on images, the 5x7 font, image files |
//!
//! # The synthetic set (the default)
//!
//! Six classes, [`SYNTH_CLASSES`] = `circle, rectangle, triangle, cross, ring, star`, drawn with
//! hard edges on cluttered backgrounds (bilinear gradients or colour blotches plus pixel noise,
//! with distractor lines, scribbles and soft blobs). Each image holds 1..=6 objects with an extent
//! of 8%..45% of the side (log-uniform), random aspect, rotation, colour and texture (solid,
//! stripes, checker, noise). Later objects are drawn over earlier ones; labels come from the
//! pixels still visible: the box is the tight bound of an object's visible pixels, an object
//! more than 60% hidden is labelled `crowd` (ignored by training, neutral in evaluation), one
//! with under 16 visible pixels or under 3 px of visible width or height is not labelled. Image `i` is a pure function of
//! `(seed, split, i)`: nothing is stored or cached, and runs resume exactly. Default
//! [`SynthConfig`]: 2000 train / 200 val images of 256x256, seed 0.
//!
//! Render time (release build, one core of the 2-core Xeon development VM, best of 8 rounds of
//! 25 images as `detect_data_synth.rs` prints it): 0.6-0.9 ms per 256x256 image, about 70% of
//! it the background (per-pixel gradient and noise); up to ~1.3 ms while other builds share the
//! machine. [`prepare`] of a 640x480 image into a 320 input with augmentation takes 1.3-1.9 ms on
//! the same machine (`detect_data_transform.rs`), a 256 synthetic image into 256 well under 1 ms.
//!
//! # Real data: formats and folder layouts
//!
//! [`open_dataset`] accepts a folder, a COCO `.json` or a YOLO `.yaml`, and detects the format:
//!
//! ```text
//! COCO (official)                 COCO (variants)                 YOLO (ultralytics)       YOLO (Roboflow)
//! root/                           root/images/{train2017,val2017}/ root/data.yaml           root/data.yaml
//!   annotations/                  root/images/{train,val}/          images/train/*.jpg       train/images/*.jpg
//!     instances_train2017.json    root/{train,val}/                 images/val/*.png         train/labels/*.txt
//!     instances_val2017.json      root/images/   (both splits)      labels/train/*.txt       valid/images/...
//!   train2017/*.jpg               root/{train,valid}/               labels/val/*.txt         valid/labels/...
//!   val2017/*.jpg                   _annotations.coco.json (+ images beside it, Roboflow)
//! ```
//!
//! * COCO: `annotations/instances_train*.json` and `instances_val*.json` (also accepted in the
//!   root itself; with several, the last by name, e.g. 2017 over 2014). The images folder of
//!   split `S` (e.g. `val2017`, short form `val`) is the first of `root/S`, `root/images/S`,
//!   `root/images/val`, `root/val`, `root/images`, the JSON's folder, `root` that holds the
//!   listed files. A `.json` given directly is one split; its partner is found by swapping
//!   `train`/`val` in its name (or its folder's name). Categories become class indices in
//!   increasing id order; `bbox` is `[x, y, width, height]` in pixels; `iscrowd` (0/1 or bool)
//!   sets [`Object::crowd`](crate::detect::Object). For one split on its own (evaluation on
//!   `val2017` only), use [`CocoSource::open`].
//! * YOLO: `images/<split>/**/*.{jpg,jpeg,png}` with `labels/<split>/**/*.txt` at the same
//!   relative path (or `<split>/images` + `<split>/labels`); `<split>` is `train` (or the first
//!   `train*`) and `val`, `valid`, `validation` (or the first `val*`). Label lines are
//!   `class cx cy w h`, fractions of the image size. Class names come from `data.yaml` (or
//!   `dataset.yaml`, or another `*.yaml` with `names:`; `names:` as a flow list `[a, b]`, a block
//!   list `- a` or a map `0: a`, see `names.rs`) or else `classes.txt` (one per line, in the root
//!   or `labels/`). The yaml's `path`/`train`/`val` keys are not read: the layout decides. Image
//!   ids are the file stems when all are distinct integers (`000000397133.jpg` -> 397133), else
//!   positions in sorted path order.
//! * Images: PNG or JPEG, recognised by content (not extension), converted to 8-bit RGB; EXIF
//!   orientation is not applied. Opening reads only image headers (sizes), on all cores.
//!
//! # Bad input: error or skip
//!
//! Nothing panics on any input. Problems that mean the dataset is not what the user thinks
//! (format errors) are errors: one line, naming the file and, for text, the line. Problems that
//! real datasets commonly carry in small numbers are skipped and counted in [`SkipReport`]
//! (printed with the dataset's description), with the first few files as examples.
//!
//! | problem | outcome |
//! |---|---|
//! | COCO JSON syntax error, missing/ill-typed field | error: file, line and column (serde) |
//! | COCO `bbox` without exactly 4 numbers | error: file and annotation id |
//! | COCO duplicate image id, duplicate category id, empty `categories`, image of size 0 | error: file and id |
//! | COCO annotation whose `image_id` is not in `images` | skip, `unknown_image_ids` |
//! | COCO annotation whose `category_id` is not in `categories` | skip, `unknown_categories` |
//! | train and val with different categories | error |
//! | image file missing (COCO entry; YOLO label file without image) | skip, `missing_images` |
//! | image unreadable at opening (not PNG/JPEG, empty, truncated header) | skip, `unreadable_images` |
//! | COCO image whose file size differs from the JSON's | skip, `size_mismatches` |
//! | image that fails to decode later, in `load` | error: file and decoder message |
//! | YOLO image without a label file | kept with no objects, `unlabelled_images` |
//! | YOLO empty label file (or blank lines) | valid: no objects |
//! | YOLO label line with other than 5 fields | error: file and line |
//! | YOLO non-numeric or non-finite field, non-integer class | error: file and line |
//! | YOLO class id >= number of names | error: file and line |
//! | box partly outside the image | clipped and kept, `boxes_clipped` |
//! | box entirely outside the image | skip, `boxes_outside` |
//! | box of zero or negative width/height | skip, `boxes_degenerate` |
//! | non-image files in a YOLO images folder | ignored, `unsupported_files` (dotfiles silently) |
//! | `data.yaml`: no `names:`, bad form, `nc:` mismatch, map index gap/duplicate | error: file and line |
//! | no images at all in a split, no labels folder, no class names | error naming the folder |
//!
//! # Network inputs
//!
//! [`prepare`] letterboxes a sample into a `size` square (aspect kept, grey 114 padding,
//! [`Letterbox`] holds the exact map) and, with an [`AugmentConfig`], applies a seeded random
//! flip, zoom (0.5..1.5), shift (±10%) and HSV jitter (ultralytics' gains), resampling once.
//! Boxes follow the same map, are clipped, and dropped when under 20% of their area or 2 px
//! remain. [`make_batch`] does this for a list of indices on all cores, deterministically, into
//! an NCHW `[0, 1]` f32 buffer; [`batch_to_tensor`] uploads it.

mod augment;
mod batch;
mod coco;
mod draw;
mod font;
mod io;
mod letterbox;
mod names;
mod open;
mod raster;
mod shapes;
mod source;
mod synth;
mod yolo;

pub use augment::{prepare, AugmentConfig, Prepared};
pub use batch::{batch_to_tensor, make_batch, Batch};
pub use coco::CocoSource;
pub use draw::{class_colour, draw_detections, draw_objects, draw_text};
pub use io::{load_image, save_png};
pub use letterbox::{letterbox, warp, Letterbox, PAD_GREY};
pub use names::{parse_classes_txt, parse_yaml_names};
pub use open::open_dataset;
pub use source::{DatasetSplit, DetectionSource, Sample, SkipReport};
pub use synth::{synthetic, ShapeInfo, ShapeLabel, Split, SynthConfig, SynthScene, SynthSource, SYNTH_CLASSES};
pub use yolo::YoloSource;
