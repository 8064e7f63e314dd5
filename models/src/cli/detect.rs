//! `ela detect train | predict | eval`: the YOLO-LAT detector from the command line.

use std::path::{Path, PathBuf};

use ela_autograd::Var;
use ela_core::{Backend, Error, Result, Tensor};

use crate::detect::data::{draw_detections, letterbox, load_image, save_png};
use crate::detect::eval::{coco_evaluate, precision_recall_f1, write_coco_results};
use crate::detect::infer::{detect_batch, predict_source, PostProcess};
use crate::detect::saved::SavedDetector;
use crate::detect::train::{open_data, train, DataSpec, DetectTrainArgs};
use crate::detect::Detection;
use crate::report::run_dir::SavedSettings;

/// Options of `ela detect`.
#[derive(clap::Args, Debug)]
pub struct DetectArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DetectCommand,
}

/// The subcommands of `ela detect`.
#[derive(clap::Subcommand, Debug)]
pub enum DetectCommand {
    /// Train YOLO-LAT (or the YOLOv8n baseline) on the embedded set or a COCO / YOLO folder.
    Train(DetectTrainArgs),
    /// Draw and save the boxes a trained detector finds in an image or a folder of images.
    Predict(PredictArgs),
    /// COCO AP / AR of a trained detector on a validation split, and a COCO results JSON.
    Eval(EvalArgs),
}

/// Options of `ela detect predict`.
#[derive(clap::Args, Debug, Clone)]
pub struct PredictArgs {
    /// The run folder of `ela detect train` (or its checkpoint file).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// An image (PNG or JPEG) or a folder of them.
    #[arg(long)]
    pub image: PathBuf,
    /// Where the annotated PNGs and predictions.json go (default: `<run>/predict`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep boxes scoring at least this.
    #[arg(long, default_value_t = 0.25)]
    pub conf: f32,
    /// NMS IoU threshold (class-aware).
    #[arg(long, default_value_t = 0.45)]
    pub iou: f64,
    /// At most this many boxes per image.
    #[arg(long, default_value_t = 300)]
    pub max_det: usize,
    /// Device: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Options of `ela detect eval`.
#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// The run folder of `ela detect train` (or its checkpoint file).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A COCO or YOLO dataset folder (default: the data the run trained on).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Where the COCO results JSON goes (default: `<run>/eval/results.json`).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Score threshold of the precision / recall / F1 line (AP uses every box).
    #[arg(long, default_value_t = 0.25)]
    pub f1_conf: f32,
    /// Device: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Run `ela detect ...`.
pub fn run(args: &DetectArgs) -> Result<()> {
    match &args.command {
        DetectCommand::Train(a) => crate::on_device!(&a.device, |dev| run_train(a, dev)),
        DetectCommand::Predict(a) => crate::on_device!(&a.device, |dev| predict(a, dev)),
        DetectCommand::Eval(a) => crate::on_device!(&a.device, |dev| eval(a, dev)),
    }
}

fn run_train<B: Backend>(args: &DetectTrainArgs, dev: &B) -> Result<()> {
    let r = train(args, dev)?;
    if let Some(first) = r.first_loss {
        crate::outln!("train loss: {first:.4} -> {:.4} over {} steps", r.last_loss, r.steps_run);
    }
    crate::outln!(
        "validation: mAP@[.5:.95] {:.3}, mAP@.5 {:.3}, mAP@.75 {:.3}, AR@100 {:.3}",
        r.val.ap,
        r.val.ap50,
        r.val.ap75,
        r.val.ar100
    );
    crate::outln!("{} parameters, {:.1} s, {:.1} images/s", r.params, r.seconds, r.images_per_sec);
    crate::outln!("checkpoint: {}", r.checkpoint.display());
    crate::outln!("metrics: {}", r.metrics.display());
    for p in &r.plots {
        crate::outln!("plot: {}", p.display());
    }
    Ok(())
}

fn is_image(p: &Path) -> bool {
    let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// The images `path` names: itself, or the PNG/JPEG files of the folder, sorted.
fn image_files(path: &Path) -> Result<Vec<PathBuf>> {
    let io = |e: std::io::Error| Error::Io { path: path.display().to_string(), msg: e.to_string() };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(io)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.is_file() && is_image(&p) {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::Io {
            path: path.display().to_string(),
            msg: "the folder holds no .png or .jpg images".into(),
        });
    }
    Ok(files)
}

/// Where each image's annotated copy goes: `<out>/<stem>.png`, or `<stem>-2.png`, `-3`, ... when
/// an earlier image of the list took that name (`a.jpg` and `a.png` in one folder), so no copy
/// overwrites another. Refused before anything is written when a copy would land on one of the
/// input images themselves (`--out` naming the image folder).
fn annotated_paths(files: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    let canonical = |p: &Path| {
        std::fs::canonicalize(p).map_err(|e| Error::Io { path: p.display().to_string(), msg: e.to_string() })
    };
    let out_dir = canonical(out)?;
    let inputs = files.iter().map(|f| canonical(f)).collect::<Result<std::collections::HashSet<_>>>()?;
    let mut taken = std::collections::HashSet::new();
    let mut paths = Vec::with_capacity(files.len());
    for file in files {
        let stem = file.file_stem().map_or("image".into(), |s| s.to_string_lossy().into_owned());
        let name = (1usize..)
            .map(|n| if n == 1 { format!("{stem}.png") } else { format!("{stem}-{n}.png") })
            .find(|name| !taken.contains(name))
            .expect("an unbounded sequence of names has a free one");
        let path = out.join(&name);
        if inputs.contains(&out_dir.join(&name)) {
            return Err(Error::invalid(
                "detect predict",
                format!(
                    "--out {} would overwrite the input image {} with its annotated copy; choose another \
                     folder (the default is the run's predict/)",
                    out.display(),
                    path.display()
                ),
            ));
        }
        taken.insert(name);
        paths.push(path);
    }
    Ok(paths)
}

/// One image's boxes, as written to predictions.json.
fn prediction_json(file: &Path, w: u32, h: u32, dets: &[Detection], classes: &[String]) -> serde_json::Value {
    let boxes: Vec<serde_json::Value> = dets
        .iter()
        .map(|d| {
            serde_json::json!({
                "class": d.class,
                "label": classes.get(d.class).cloned().unwrap_or_default(),
                "score": d.score,
                "bbox_xyxy": [d.bbox.x0, d.bbox.y0, d.bbox.x1, d.bbox.y1],
            })
        })
        .collect();
    serde_json::json!({ "image": file.display().to_string(), "width": w, "height": h, "detections": boxes })
}

fn predict<B: Backend>(args: &PredictArgs, dev: &B) -> Result<()> {
    if !(0.0..=1.0).contains(&args.conf) || !(0.0..=1.0).contains(&args.iou) {
        return Err(Error::invalid(
            "detect predict",
            format!("--conf and --iou must lie in [0, 1], got {} and {}", args.conf, args.iou),
        ));
    }
    let saved = SavedDetector::load(&args.checkpoint, dev)?;
    let files = image_files(&args.image)?;
    let run_dir = saved.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let out = args.out.clone().unwrap_or_else(|| run_dir.join("predict"));
    std::fs::create_dir_all(&out).map_err(|e| Error::Io { path: out.display().to_string(), msg: e.to_string() })?;
    let pngs = annotated_paths(&files, &out)?;
    let post = PostProcess { conf_threshold: args.conf, iou_threshold: args.iou, max_det: args.max_det };
    let size = saved.model.config().input_size;
    let mut records = Vec::new();
    for (file, png) in files.iter().zip(&pngs) {
        let mut img = load_image(file)?;
        let (input, lb) = letterbox(&img, size)?;
        let pixels: Vec<f32> =
            (0..3).flat_map(|c| input.pixels().map(move |p| p.0[c] as f32 / 255.0).collect::<Vec<_>>()).collect();
        let x = Var::constant(Tensor::from_vec(pixels, [1, 3, size, size], &ela_core::Cpu)?.to_device(dev)?);
        let dets: Vec<Detection> = detect_batch(&saved.model, &x, &post)?
            .remove(0)
            .into_iter()
            .map(|d| Detection { bbox: lb.unmap(d.bbox), ..d })
            .filter(|d| d.bbox.is_valid())
            .collect();
        draw_detections(&mut img, &dets, &saved.classes);
        save_png(png, &img)?;
        let summary: Vec<String> =
            dets.iter().map(|d| format!("{} {:.2}", saved.classes.get(d.class).map_or("?", |s| s), d.score)).collect();
        crate::outln!("{}: {} boxes [{}] -> {}", file.display(), dets.len(), summary.join(", "), png.display());
        records.push(prediction_json(file, img.width(), img.height(), &dets, &saved.classes));
    }
    let json_path = out.join("predictions.json");
    let text = serde_json::to_string_pretty(&records).map_err(|e| Error::invalid("detect predict", e.to_string()))?;
    ela_nn::checkpoint::write_atomic(&json_path, text.as_bytes())?;
    crate::outln!("predictions: {}", json_path.display());
    Ok(())
}

fn eval<B: Backend>(args: &EvalArgs, dev: &B) -> Result<()> {
    if args.batch == 0 {
        return Err(Error::invalid("detect eval", "--batch must be positive"));
    }
    let saved = SavedDetector::load_for(&args.checkpoint, dev, args.batch)?;
    let run = SavedSettings(|k: &str| saved.metadata.get(k).cloned());
    let data_dir = match &args.data {
        Some(d) => Some(d.clone()),
        None => run.data_path()?,
    };
    let data = open_data(&DataSpec {
        dir: data_dir,
        synth_train: run.get("synth_train")?,
        synth_val: run.get("synth_val")?,
        seed: run.get("seed")?,
        image_size: saved.model.config().input_size,
    })?;
    if data.val.class_names() != saved.classes.as_slice() {
        return Err(Error::invalid(
            "detect eval",
            format!("the data's classes {:?} differ from the model's {:?}", data.val.class_names(), saved.classes),
        ));
    }
    let images = predict_source(&saved.model, data.val.as_ref(), args.batch, &PostProcess::for_eval(), dev)?;
    let metrics = coco_evaluate(&images, saved.classes.len())?;
    crate::outln!("{} validation images ({})", images.len(), data.val.describe());
    crate::outln!("{}", metrics.summary_table(&saved.classes));
    let prf = precision_recall_f1(&images, args.f1_conf, 0.5);
    crate::outln!(
        "at score >= {} and IoU 0.5: precision {:.3}, recall {:.3}, F1 {:.3} ({} TP, {} FP, {} FN) -- not AP",
        args.f1_conf,
        prf.precision,
        prf.recall,
        prf.f1,
        prf.tp,
        prf.fp,
        prf.fn_
    );
    let run_dir = saved.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let results = args.results.clone().unwrap_or_else(|| run_dir.join("eval").join("results.json"));
    if let Some(dir) = results.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), msg: e.to_string() })?;
    }
    let per_image: Vec<(u64, Vec<Detection>)> = images.iter().map(|im| (im.image_id, im.dets.clone())).collect();
    write_coco_results(&results, &per_image, data.val.category_ids())?;
    crate::outln!("COCO results: {}", results.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(tag: &str, files: &[&str]) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ela-predict-names-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for f in files {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        d
    }

    #[test]
    fn annotated_copies_get_distinct_names() {
        let dir = folder("distinct", &["a.jpg", "a.png", "a-2.png", "b.jpeg"]);
        let files = image_files(&dir).unwrap();
        let out = dir.join("pred");
        std::fs::create_dir_all(&out).unwrap();
        let names: Vec<String> = annotated_paths(&files, &out)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&out).unwrap().to_string_lossy().into_owned())
            .collect();
        // Sorted inputs a-2.png, a.jpg, a.png, b.jpeg.
        assert_eq!(names, ["a-2.png", "a.png", "a-3.png", "b.png"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_annotated_copy_never_replaces_an_input() {
        let dir = folder("inputs", &["a.jpg", "b.png"]);
        let files = image_files(&dir).unwrap();
        // The image folder itself as --out: b.png would be overwritten.
        let e = annotated_paths(&files, &dir).unwrap_err().to_string();
        assert!(e.contains("would overwrite the input image") && e.contains("b.png"), "{e}");
        // The same folder spelled another way is caught too.
        let e = annotated_paths(&files, &dir.join(".")).unwrap_err().to_string();
        assert!(e.contains("b.png"), "{e}");
        // JPEGs alone get PNG copies beside them.
        let jpg = vec![dir.join("a.jpg")];
        assert_eq!(annotated_paths(&jpg, &dir).unwrap(), [dir.join("a.png")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
