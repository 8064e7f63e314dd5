//! Render four images of the embedded detection set with their labelled boxes drawn, as one PNG
//! grid (the picture in docs/yolo_lat.md).
//!
//! ```sh
//! cargo run --release -p ela-models --example synth_preview -- docs/yolo_lat_synth.png 256
//! ```

use ela_models::detect::data::{draw_objects, save_png, Split, SynthConfig, SynthSource};
use image::{GenericImage, RgbImage};

fn main() -> ela_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "synth_preview.png".into());
    let size: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let (cols, rows) = (4u32, 1u32);
    let cfg = SynthConfig { image_size: size, ..Default::default() };
    let src = SynthSource::new(&cfg, Split::Train)?;
    let names: Vec<String> = ela_models::detect::data::SYNTH_CLASSES.iter().map(|s| s.to_string()).collect();
    let mut grid = RgbImage::new(cols * size, rows * size);
    for i in 0..(cols * rows) {
        let mut sample = src.render(i as usize)?.sample;
        let labelled: Vec<_> = sample.objects.iter().filter(|o| !o.crowd).copied().collect();
        draw_objects(&mut sample.image, &labelled, &names);
        grid.copy_from(&sample.image, (i % cols) * size, (i / cols) * size)
            .map_err(|e| ela_core::Error::invalid("synth_preview", e.to_string()))?;
    }
    save_png(std::path::Path::new(&out), &grid)?;
    println!("{out}");
    Ok(())
}
