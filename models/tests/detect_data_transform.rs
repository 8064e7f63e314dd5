//! Letterbox and augmentation move boxes with the pixels they label; drawing and PNG saving.

mod bin;

use bin::TempDir;

use ela_core::Rng;
use ela_models::detect::data::{
    class_colour, draw_detections, draw_objects, letterbox, load_image, prepare, save_png, AugmentConfig, Letterbox,
    PAD_GREY,
};
use ela_models::detect::{BBox, Detection, Object};
use image::{Rgb, RgbImage};
use proptest::prelude::*;

const BG: [u8; 3] = [40, 60, 80];
const MARK: [u8; 3] = [250, 10, 200];

/// Whether an output pixel is mostly the marker colour (interpolated edge pixels are mixtures).
fn marked(p: &[u8]) -> bool {
    p[0] > 145 && p[1] < 35 && p[2] > 140
}

/// Check that `b` (input pixels) covers exactly the marked pixels of `img`, within `tol` px.
fn check_cover(img: &RgbImage, b: BBox, tol: f32) -> Result<(), TestCaseError> {
    let n = img.width() as f32;
    for (x, y, p) in img.enumerate_pixels() {
        let (cx, cy) = (x as f32 + 0.5, y as f32 + 0.5);
        if marked(&p.0) {
            prop_assert!(
                cx > b.x0 - tol && cx < b.x1 + tol && cy > b.y0 - tol && cy < b.y1 + tol,
                "marked pixel ({x}, {y}) outside box {b:?}"
            );
        } else if cx > b.x0 + tol && cx < b.x1 - tol && cy > b.y0 + tol && cy < b.y1 - tol {
            prop_assert!(false, "pixel ({x}, {y}) = {:?} inside box {b:?} is not marked (canvas {n})", p.0);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Paint a box's region on a plain image; after letterbox + flip/zoom/shift the transformed
    /// box covers the painted region.
    #[test]
    fn boxes_move_with_the_image(
        w in 24u32..320, h in 24u32..320,
        fx in 0.0f32..0.8, fy in 0.0f32..0.8, fw in 0.08f32..1.0, fh in 0.08f32..1.0,
        size in prop::sample::select(vec![64usize, 96, 128, 160]),
        seed in any::<u64>(), augment in any::<bool>(),
    ) {
        let x0 = (fx * w as f32) as u32;
        let y0 = (fy * h as f32) as u32;
        let x1 = (x0 + ((fw * w as f32) as u32).max(6)).min(w);
        let y1 = (y0 + ((fh * h as f32) as u32).max(6)).min(h);
        prop_assume!(x1 >= x0 + 6 && y1 >= y0 + 6);
        let img = RgbImage::from_fn(w, h, |x, y| Rgb(if x >= x0 && x < x1 && y >= y0 && y < y1 { MARK } else { BG }));
        let obj = Object::new(3, BBox::new(x0 as f32, y0 as f32, x1 as f32, y1 as f32));
        let cfg = AugmentConfig { hsv_h: 0.0, hsv_s: 0.0, hsv_v: 0.0, ..AugmentConfig::default() };
        let p = prepare(&img, &[obj], size, augment.then_some(&cfg), &mut Rng::new(seed)).unwrap();
        prop_assert_eq!((p.image.width() as usize, p.image.height() as usize), (size, size));
        let lb = p.transform;
        let mapped = lb.map(obj.bbox);
        // Marker pixels appear only where the mapped box lands (the rest is background or grey).
        match p.objects.first() {
            Some(o) => {
                prop_assert_eq!(o.class, 3);
                prop_assert_eq!(o.bbox, mapped.clip(size as f32, size as f32));
                check_cover(&p.image, mapped, 1.5)?;
                // Back to the original image: the part of the box still visible.
                let back = lb.unmap(o.bbox);
                prop_assert!(back.x0 >= obj.bbox.x0 - 1e-2 && back.x1 <= obj.bbox.x1 + 1e-2, "{:?} {:?}", back, obj.bbox);
                prop_assert!(back.y0 >= obj.bbox.y0 - 1e-2 && back.y1 <= obj.bbox.y1 + 1e-2, "{:?} {:?}", back, obj.bbox);
            }
            None => {
                prop_assert!(augment, "a box was dropped without augmentation");
                let c = mapped.clip(size as f32, size as f32);
                prop_assert!(c.area() < 0.2 * mapped.area() || c.width() < 2.0 || c.height() < 2.0);
            }
        }
        if !augment {
            // Without augmentation, the letterbox: centred, scaled to fit, padding grey.
            prop_assert!(!lb.flipped);
            prop_assert!((lb.scale - size as f32 / w.max(h) as f32).abs() < 1e-6);
            prop_assert_eq!(p.image.get_pixel(0, 0).0 == [PAD_GREY; 3], lb.pad_x > 0.5 || lb.pad_y > 0.5);
        }
    }

    /// `unmap(map(b)) == b` for boxes inside the image, flipped or not.
    #[test]
    fn letterbox_round_trip(
        w in 1u32..2000, h in 1u32..2000, size in 1usize..1024,
        a in 0.0f32..1.0, b in 0.0f32..1.0, c in 0.0f32..1.0, d in 0.0f32..1.0, flipped in any::<bool>(),
    ) {
        let lb = Letterbox { flipped, ..Letterbox::new(w, h, size).unwrap() };
        let (x0, x1) = (a.min(c) * w as f32, a.max(c) * w as f32);
        let (y0, y1) = (b.min(d) * h as f32, b.max(d) * h as f32);
        let bx = BBox::new(x0, y0, x1, y1);
        let m = lb.map(bx);
        prop_assert!(m.x0 >= -1e-3 && m.x1 <= size as f32 + 1e-3 && m.y0 >= -1e-3 && m.y1 <= size as f32 + 1e-3);
        let back = lb.unmap(m);
        let tol = 1e-4 * w.max(h) as f32;
        for (p, q) in [(back.x0, x0), (back.y0, y0), (back.x1, x1), (back.y1, y1)] {
            prop_assert!((p - q).abs() <= tol, "{:?} -> {:?} -> {:?}", bx, m, back);
        }
        // unmap clips to the original image.
        let out = lb.unmap(BBox::new(-50.0, -50.0, size as f32 + 50.0, size as f32 + 50.0));
        prop_assert_eq!(out, BBox::new(0.0, 0.0, w as f32, h as f32));
    }
}

#[test]
fn augmentation_is_seeded_and_jitters_colour() {
    let img = RgbImage::from_fn(90, 60, |x, y| Rgb([(x * 2) as u8, (y * 4) as u8, 120]));
    let objs = [Object::new(0, BBox::new(10.0, 10.0, 50.0, 40.0))];
    let cfg = AugmentConfig::default();
    let a = prepare(&img, &objs, 64, Some(&cfg), &mut Rng::new(9)).unwrap();
    let b = prepare(&img, &objs, 64, Some(&cfg), &mut Rng::new(9)).unwrap();
    assert_eq!((a.image.clone(), a.objects.clone(), a.transform), (b.image, b.objects, b.transform));
    let mut differ = 0;
    for s in 0..20 {
        let c = prepare(&img, &objs, 64, Some(&cfg), &mut Rng::new(s)).unwrap();
        differ += (c.image != a.image) as usize;
    }
    assert!(differ >= 19);
    // `none()` gives the plain letterbox exactly.
    let plain = prepare(&img, &objs, 64, None, &mut Rng::new(0)).unwrap();
    let none = prepare(&img, &objs, 64, Some(&AugmentConfig::none()), &mut Rng::new(3)).unwrap();
    assert_eq!(plain.image, none.image);
    assert_eq!(plain.objects, none.objects);
    assert_eq!(letterbox(&img, 64).unwrap().0, plain.image);
    assert!(AugmentConfig { flip_prob: 2.0, ..cfg.clone() }.validate().is_err());
    assert!(AugmentConfig { scale: (1.5, 0.5), ..cfg }.validate().is_err());
}

#[test]
fn large_shrink_averages_instead_of_aliasing() {
    // A 1-px checkerboard shrunk 8x must come out a flat mid grey, not a moire of black and white.
    let img = RgbImage::from_fn(512, 512, |x, y| Rgb([if (x + y) % 2 == 0 { 0 } else { 255 }; 3]));
    let (out, lb) = letterbox(&img, 64).unwrap();
    assert_eq!(lb.scale, 0.125);
    for p in out.pixels() {
        assert!((120..=135).contains(&p.0[0]), "{:?}", p.0);
    }
}

#[test]
fn draw_and_save_png() {
    let dir = TempDir::new("detect-draw");
    let grey = Rgb([30u8, 30, 30]);
    let mut img = RgbImage::from_pixel(120, 90, grey);
    let names = vec!["circle".to_string(), "ring".into()];
    let dets = [
        Detection { class: 1, bbox: BBox::new(20.0, 30.0, 70.0, 80.0), score: 0.87 },
        Detection { class: 0, bbox: BBox::new(500.0, 500.0, 600.0, 600.0), score: 0.5 }, // outside: skipped
        Detection { class: 9, bbox: BBox::new(f32::NAN, 0.0, 5.0, 5.0), score: 0.5 },    // invalid: skipped
        Detection { class: 7, bbox: BBox::new(-10.0, -10.0, 200.0, 5.0), score: 1.0 },   // unknown class, clipped
    ];
    draw_detections(&mut img, &dets, &names);
    let c = class_colour(1);
    // Both 2-px outline rows/columns of the first box, on every edge.
    for x in [20u32, 21, 68, 69] {
        assert_eq!(*img.get_pixel(x, 60), c, "column {x}");
    }
    for y in [30u32, 31, 78, 79] {
        assert_eq!(*img.get_pixel(45, y), c, "row {y}");
    }
    assert_eq!(*img.get_pixel(45, 60), grey); // interior untouched
    assert_eq!(*img.get_pixel(72, 60), grey); // outside untouched
                                              // The tag sits above the box, filled with the class colour and holding text pixels.
    let tag: Vec<Rgb<u8>> =
        (20..70).flat_map(|x| (19..30).map(move |y| (x, y))).map(|(x, y)| *img.get_pixel(x, y)).collect();
    assert!(tag.iter().filter(|p| **p == c).count() > 200);
    assert!(tag.iter().any(|p| *p != c && *p != grey), "no text drawn");
    let mut gt = img.clone();
    draw_objects(&mut gt, &[Object { class: 0, bbox: BBox::new(80.0, 40.0, 110.0, 70.0), crowd: true }], &names);
    assert_eq!(*gt.get_pixel(80, 55), class_colour(0));

    let path = dir.0.join("pred.png");
    save_png(&path, &img).unwrap();
    save_png(&path, &img).unwrap(); // overwrites
    let back = load_image(&path).unwrap();
    assert_eq!(back, img);
    let left: Vec<_> = std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("pred.png")], "temporary files left behind");
    let bad = dir.0.join("no_such_dir/x.png");
    let e = save_png(&bad, &img).unwrap_err().to_string();
    assert!(e.starts_with(&bad.display().to_string()), "{e}");
    let e = load_image(&dir.0.join("missing.png")).unwrap_err().to_string();
    assert!(e.contains("missing.png"), "{e}");
}

#[test]
fn prepare_speed() {
    // Letterbox + augmentation of a 640x480 photo-sized image into 320: the per-step cost.
    // The fastest of several rounds: robust to other processes sharing the machine.
    let img = RgbImage::from_fn(640, 480, |x, y| Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8]));
    let objs = [Object::new(0, BBox::new(100.0, 100.0, 300.0, 260.0))];
    let cfg = AugmentConfig::default();
    let mut best = f64::INFINITY;
    for r in 0..8u64 {
        let t = std::time::Instant::now();
        for s in 0..10 {
            std::hint::black_box(prepare(&img, &objs, 320, Some(&cfg), &mut Rng::new(r * 10 + s)).unwrap());
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e3 / 10.0);
    }
    eprintln!("prepare 640x480 -> 320 with augmentation: {best:.3} ms per image (one core, best of 8 rounds)");
    assert!(best < 50.0, "{best} ms");
}
