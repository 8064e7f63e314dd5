#!/usr/bin/env python3
"""Reference numbers for ELA-rs' COCO box evaluation (models/src/detect/eval), from pycocotools.

Writes models/tests/fixtures/coco_eval/:

* gt.json, dets.json, expected.json: a COCO ground-truth file, a COCO results file and what
  pycocotools' COCOeval(iouType='bbox') makes of them. Four categories (ids 1, 3, 7, 9: gaps on
  purpose), no crowd regions. Hand-made images cover, each in one place: an image without
  detections, one without ground truth, one with neither, duplicate detections of one object,
  equal scores within an image and across images, a category with ground truth and no
  detections (7), one with detections and no ground truth (9), objects of area exactly 32^2
  and 96^2 (both ends of the area ranges are inclusive), an unmatched detection of area 32^2,
  a ground-truth `area` field that differs from the box area (as COCO's mask areas do), more
  than 100 detections of one class in one image with a true positive beyond the 100th, IoUs of
  exactly 0.5, 0.55, 0.75 and 0.85 (each equal, as a double, to the threshold numpy computes),
  and one detection with equal IoU to two objects (pycocotools gives it the later one). A
  seeded random part (numpy RandomState(2024)) adds ordinary clutter.
* gt_crowd.json, dets_crowd.json, expected_crowd.json: the same with crowd regions
  (iscrowd=1): detections inside a crowd are ignored, a duplicate of a matched object falls into
  the crowd around it, a real match wins over a better crowd overlap, and a detection half
  inside a crowd is ignored at IoU 0.5 and a false positive above.

expected*.json holds `stats` (pycocotools' 12 summary numbers, `COCOeval.stats`) and, per
category in ascending id order, the same 12 numbers taken from `eval['precision']` and
`eval['recall']` at that category's index (the standard per-class slice, as Detectron2 does),
with -1 where undefined. The versions of pycocotools and numpy are recorded in the file.

Every coordinate is a multiple of 1/8 and every score a multiple of 1/64, so the values are
exact in f32 and all sums/products of the IoU are exact: the Rust side, which stores f32 boxes,
sees bit-identical IoUs and scores.

Usage: pip install pycocotools numpy; python3 benches/peers/coco_eval_fixture.py
       [--out models/tests/fixtures/coco_eval]
       python3 benches/peers/coco_eval_fixture.py --stress 200 --out /tmp/coco_stress
       (random cases stress_<i>_{gt,dets,expected}.json for the ignored test
       `stress_cases_match_pycocotools` in models/tests/detect_eval_fixture.rs, run with
       ELA_COCO_EVAL_STRESS_DIR=/tmp/coco_stress)
"""
import argparse
import contextlib
import copy
import io
import json
import os

import numpy as np
import pycocotools
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 3, "name": "car"},
    {"id": 7, "name": "dog"},   # ground truth, no detections
    {"id": 9, "name": "kite"},  # detections, no ground truth
]


class Builder:
    """Collects images, annotations and detections with running annotation ids."""

    def __init__(self):
        self.images, self.anns, self.dets = [], [], []

    def image(self, image_id):
        self.images.append({"id": image_id, "width": 640, "height": 480})

    def gt(self, image_id, cat, bbox, area=None, crowd=0):
        self.anns.append({
            "id": len(self.anns) + 1, "image_id": image_id, "category_id": cat,
            "bbox": [float(v) for v in bbox],
            "area": float(area if area is not None else bbox[2] * bbox[3]),
            "iscrowd": crowd,
        })

    def det(self, image_id, cat, bbox, score):
        self.dets.append({"image_id": image_id, "category_id": cat,
                          "bbox": [float(v) for v in bbox], "score": float(score)})


def q8(x):
    """Round to a multiple of 1/8 (exact in f32 and in every sum the IoU takes)."""
    return float(np.round(np.asarray(x) * 8.0) / 8.0)


def random_images(b, rng, ids, cats, crowd_prob=0.0):
    """Clutter: objects of every size, jittered detections, duplicates, wrong classes, FPs."""
    for image_id in ids:
        b.image(image_id)
        objects = []
        for _ in range(rng.randint(0, 7)):
            cat = cats[rng.randint(0, min(2, len(cats)))]  # the first two get objects
            w = q8(np.exp(rng.uniform(np.log(6), np.log(250))))
            h = q8(w * rng.uniform(0.5, 2.0))
            x, y = q8(rng.uniform(0, 640 - w)), q8(rng.uniform(0, 480 - min(h, 470)))
            crowd = int(rng.uniform() < crowd_prob)
            area = q8(w * h * rng.uniform(0.55, 1.0)) if rng.uniform() < 0.3 else None
            b.gt(image_id, cat, [x, y, w, h], area=area, crowd=crowd)
            objects.append((cat, x, y, w, h))
        for cat, x, y, w, h in objects:
            for _ in range(1 + int(rng.uniform() < 0.3)):
                if rng.uniform() > 0.85:
                    continue
                j = max(w, h) * 0.15
                bx = [q8(x + rng.uniform(-j, j)), q8(y + rng.uniform(-j, j)),
                      max(1.0, q8(w + rng.uniform(-j, j))), max(1.0, q8(h + rng.uniform(-j, j)))]
                c = cat if rng.uniform() > 0.1 else cats[rng.randint(0, len(cats))]
                b.det(image_id, c, bx, rng.randint(8, 65) / 64.0)
        for _ in range(rng.randint(0, 5)):
            w, h = q8(rng.uniform(4, 200)), q8(rng.uniform(4, 200))
            b.det(image_id, cats[rng.randint(0, len(cats))],
                  [q8(rng.uniform(0, 600)), q8(rng.uniform(0, 440)), w, h], rng.randint(1, 49) / 64.0)


def main_fixture():
    b = Builder()
    P, C, D, K = 1, 3, 7, 9
    # 101: thresholds, duplicates, area boundaries.
    b.image(101)
    b.gt(101, P, [10, 10, 20, 20])                        # small
    b.det(101, P, [10, 10, 20, 20], 0.9375)
    b.det(101, P, [11, 10, 20, 20], 0.875)                # duplicate: FP (ties 105's TP)
    b.gt(101, P, [100, 100, 40, 40])                      # medium
    b.det(101, P, [100, 100, 40, 20], 0.75)               # IoU exactly 0.5
    b.gt(101, P, [200, 200, 100, 100])                    # large
    b.det(101, P, [200, 200, 100, 75], 0.75)              # IoU exactly 0.75, same score
    b.gt(101, P, [320, 10, 32, 32])                       # area 1024: small and medium
    b.det(101, P, [320, 10, 32, 32], 0.5)
    b.gt(101, P, [400, 200, 96, 96])                      # area 9216: medium and large
    b.det(101, P, [402, 201, 96, 96], 0.5)
    b.det(101, P, [600, 400, 32, 32], 0.625)              # unmatched, area 1024
    b.det(101, P, [500, 0, 120, 120], 0.25)               # unmatched, large
    b.gt(101, P, [0, 300, 10, 10])
    b.det(101, P, [0, 300, 10, 5.5], 0.375)               # IoU exactly 0.55
    b.gt(101, P, [20, 300, 10, 10])
    b.det(101, P, [20, 300, 10, 8.5], 0.375)              # IoU exactly 0.85
    # 102: ground truth, no detections (includes the detection-less category 7).
    b.image(102)
    b.gt(102, P, [50, 50, 60, 80])
    b.gt(102, C, [5, 5, 30, 20])
    b.gt(102, D, [100, 100, 50, 50])
    b.gt(102, D, [200, 10, 20, 20])
    # 103: detections, no ground truth.
    b.image(103)
    b.det(103, P, [0, 0, 50, 50], 0.9375)                 # ties 101's best across images
    b.det(103, C, [10, 10, 40, 40], 0.5)
    b.det(103, K, [30, 30, 30, 30], 0.8125)
    # 104: over 100 detections of one class; a true positive beyond the 100th.
    b.image(104)
    rng = np.random.RandomState(7)
    b.gt(104, C, [10, 10, 50, 50])
    b.gt(104, C, [100, 100, 30, 30])
    b.gt(104, C, [300, 300, 150, 100])
    b.det(104, C, [10, 10, 50, 50], 0.984375)
    b.det(104, C, [101, 100, 30, 30], 0.59375)
    for _ in range(117):
        w, h = q8(rng.uniform(8, 60)), q8(rng.uniform(8, 60))
        b.det(104, C, [q8(rng.uniform(300, 560)), q8(rng.uniform(0, 200)), w, h],
              rng.randint(20, 58) / 64.0)
    b.det(104, C, [300, 300, 150, 100], 0.0625)           # rank 120: cut by maxDets=100
    b.det(104, P, [20, 20, 30, 30], 0.5)
    b.det(104, K, [400, 400, 20, 20], 0.4375)
    # 105: ties across images.
    b.image(105)
    b.gt(105, P, [0, 0, 40, 40])
    b.det(105, P, [0, 0, 40, 40], 0.875)
    b.gt(105, C, [60, 60, 40, 40])
    b.det(105, C, [60, 60, 40, 40], 0.5)
    # 106: a detection with equal IoU to two objects (the later one gets it).
    b.image(106)
    b.gt(106, P, [0, 0, 10, 10])
    b.gt(106, P, [2, 0, 10, 10])
    b.det(106, P, [1, 0, 10, 10], 0.8125)
    b.det(106, P, [0, 0, 10, 10], 0.6875)
    # 107: annotation areas that differ from the box area.
    b.image(107)
    b.gt(107, P, [0, 0, 40, 40], area=900)                # box medium, area small
    b.det(107, P, [0, 0, 40, 40], 0.8125)
    b.gt(107, C, [100, 100, 100, 100], area=8000)         # box large, area medium
    b.det(107, C, [100, 100, 100, 100], 0.75)
    # 108: nothing at all.
    b.image(108)
    random_images(b, np.random.RandomState(2024), range(201, 213), [P, C, K])
    return b


def crowd_fixture():
    b = Builder()
    P, C = 1, 3
    b.image(1)
    b.gt(1, P, [0, 0, 200, 200], area=30000, crowd=1)
    b.gt(1, P, [50, 50, 40, 40])
    b.det(1, P, [50, 50, 40, 40], 0.9375)                 # TP
    b.det(1, P, [52, 50, 40, 40], 0.875)                  # duplicate: into the crowd, ignored
    b.det(1, P, [10, 10, 30, 30], 0.8125)                 # inside the crowd: ignored
    b.det(1, P, [120, 120, 50, 50], 0.75)
    b.det(1, P, [180, 0, 40, 40], 0.6875)                 # half in the crowd: IoA 0.5
    b.gt(1, P, [300, 300, 40, 40])
    b.gt(1, P, [290, 290, 400 - 290, 400 - 290], area=12100, crowd=1)
    b.det(1, P, [295, 295, 40, 40], 0.625)                # IoU 0.62 real vs IoA 1 crowd
    b.image(2)
    b.gt(2, C, [0, 0, 100, 100], area=9000, crowd=1)      # only a crowd for this class here
    b.det(2, C, [10, 10, 20, 20], 0.75)
    b.det(2, C, [150, 150, 20, 20], 0.5)
    b.image(3)
    b.gt(3, C, [10, 10, 60, 60])
    b.gt(3, C, [0, 0, 30, 30], area=600, crowd=1)         # a small crowd
    b.det(3, C, [10, 10, 60, 60], 0.75)
    b.det(3, C, [2, 2, 10, 10], 0.6875)
    b.det(3, P, [0, 0, 300, 300], 0.5)
    random_images(b, np.random.RandomState(99), range(10, 18), [P, C], crowd_prob=0.2)
    return b


def evaluate(gt, dets):
    """pycocotools' 12 stats and the per-category slices, quietly."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        E = COCOeval(coco_gt, coco_dt, iouType="bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    p = E.params
    prec, rec = E.eval["precision"], E.eval["recall"]

    def mean(s):
        s = s[s > -1]
        return float(np.mean(s)) if len(s) else -1.0

    def one(k, ap, iou=None, area="all", max_dets=100):
        a = p.areaRngLbl.index(area)
        m = p.maxDets.index(max_dets)
        s = prec if ap else rec
        if iou is not None:
            s = s[np.where(iou == p.iouThrs)[0]]
        return mean(s[:, :, k, a, m] if ap else s[:, k, a, m])

    per_class = []
    for k, cat_id in enumerate(p.catIds):
        stats = [one(k, True), one(k, True, iou=0.5), one(k, True, iou=0.75)]
        stats += [one(k, True, area=a) for a in ("small", "medium", "large")]
        stats += [one(k, False, max_dets=m) for m in (1, 10, 100)]
        stats += [one(k, False, area=a) for a in ("small", "medium", "large")]
        per_class.append({"category_id": int(cat_id), "stats": stats})
    return {
        "generator": "benches/peers/coco_eval_fixture.py",
        "pycocotools": pycocotools.__version__ if hasattr(pycocotools, "__version__") else pkg_version(),
        "numpy": np.__version__,
        "stats": [float(v) for v in E.stats],
        "per_class": per_class,
    }


def pkg_version():
    from importlib.metadata import version
    return version("pycocotools")


def dump_lines(obj):
    """JSON with one list item per line: small, diffable, readable."""
    if isinstance(obj, list):
        return "[\n" + ",\n".join(json.dumps(x, separators=(",", ":")) for x in obj) + "\n]\n"
    parts = []
    for k, v in obj.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            inner = ",\n".join("  " + json.dumps(x, separators=(",", ":")) for x in v)
            parts.append(f"{json.dumps(k)}: [\n{inner}\n]")
        else:
            parts.append(f"{json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def write_case(out, stem, b, images_order_seed):
    images = list(b.images)
    np.random.RandomState(images_order_seed).shuffle(images)  # file order is not id order
    gt = {"images": images, "annotations": b.anns, "categories": CATEGORIES}
    expected = evaluate(gt, b.dets)
    for name, obj in ((f"gt{stem}.json", gt), (f"dets{stem}.json", b.dets), (f"expected{stem}.json", expected)):
        with open(os.path.join(out, name), "w") as f:
            f.write(dump_lines(obj))
    return expected


def stress_case(seed):
    rng = np.random.RandomState(seed)
    b = Builder()
    ids = list(rng.choice(1000, size=rng.randint(1, 10), replace=False))
    random_images(b, rng, [int(i) for i in ids], [1, 3, 7, 9][: rng.randint(1, 5)],
                  crowd_prob=rng.choice([0.0, 0.2]))
    if rng.uniform() < 0.3:  # one crowded image past the 100-detection cap
        image_id = int(ids[0])
        for _ in range(rng.randint(90, 140)):
            b.det(image_id, 1, [q8(rng.uniform(0, 600)), q8(rng.uniform(0, 440)),
                                q8(rng.uniform(2, 80)), q8(rng.uniform(2, 80))], rng.randint(1, 65) / 64.0)
    if not b.dets:
        b.det(int(ids[0]), 1, [0.0, 0.0, 10.0, 10.0], 0.5)
    return b


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                  "models", "tests", "fixtures", "coco_eval"))
    ap.add_argument("--stress", type=int, default=0, help="write this many random cases instead")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.stress:
        for i in range(args.stress):
            write_case(args.out, f"_stress_{i}", stress_case(1000 + i), i)
        print(f"wrote {args.stress} stress cases to {args.out}")
        return
    e = write_case(args.out, "", main_fixture(), 1)
    print("main  stats:", " ".join(f"{v:.4f}" for v in e["stats"]))
    e = write_case(args.out, "_crowd", crowd_fixture(), 2)
    print("crowd stats:", " ".join(f"{v:.4f}" for v in e["stats"]))


if __name__ == "__main__":
    main()
