"""DDIM inversion on the mini-SD: reconstruction, colour edits, and img2img on the same pictures (lesson 11).

    .venv/bin/python benchmarks/lora_inversion.py [--pictures 40] [--edit-pictures 40] [--steps 50] [--out results.json]

Lesson 11 reads benchmarks/results/lora_inversion-*.json (the newest). Everything is measured by
``course_lib.editing``, as tests/test_inversion.py's targets are:

1. **Reconstruction.** ``--pictures`` pictures drawn with PIL off the data set's grid
   (``inversion.drawn_pictures``, seed 0, rings and plus signs included) are inverted with their
   caption (the empty prompt for shapes without a word) at guidance 1 and sampled back with DDIM
   (eta = 0) at guidance 1 from the z_T found. PSNR to the picture per picture, and beside it the
   VAE's own round trip D(E(x)), the best any latent method can do.
2. **Editing by inversion.** ``--edit-pictures`` circles, squares and triangles drawn alike (seed
   1), all of them, each given a new colour at random (``editing.edit_targets``), inverted with
   the source caption at guidance 1 and sampled from z_T with the colour word changed, at
   guidance 1, 3.5 and 7.5. The 7-colour judge reads each edit: the colour is the new one, shape
   and position those drawn (size reported apart; and the same against the judge's reading of the
   source picture).
3. **img2img** (SDEdit) on the same pictures and new prompts, strengths 0.4, 0.6, 0.8, guidance
   7.5: the same reading.

Shares come with 90 % Wilson intervals. One thread.
"""

import argparse
import datetime
import json
import os
import time

import torch

from course_lib import editing
from course_lib.inversion import drawn_pictures
from course_lib.orange import EXTENDED_JUDGE
from course_lib.pipeline import StableDiffusion
from course_lib.pretrained import load_course_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--pictures", type=int, default=40, help="pictures to reconstruct (seed 0, five shapes)")
    parser.add_argument("--edit-pictures", type=int, default=40, help="pictures to edit (seed 1, three shapes)")
    parser.add_argument("--edit-scales", default="1,3.5,7.5")
    parser.add_argument("--strengths", default="0.4,0.6,0.8")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.perf_counter()

    pipe = StableDiffusion.from_course("mini-sd")
    pipe.set_progress_bar_config(disable=True)
    judge, _ = load_course_model(EXTENDED_JUDGE)
    results = {"benchmark": "benchmarks/lora_inversion.py", "date": str(datetime.date.today()),
               "torch": torch.__version__, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
               "steps": args.steps, "interval_level": editing.INTERVAL_LEVEL}

    # 1. reconstruction
    start = time.perf_counter()
    images, attributes = drawn_pictures(args.pictures, seed=0)
    measured = editing.reconstruct(pipe, images, attributes, args.steps)
    inversion, round_trip = measured["inversion_db"], measured["round_trip_db"]
    pictures = [{"shape": a["shape"], "color": a["color"], "size": a["size"], "prompt": p,
                 "vae_round_trip_db": round(v, 2), "inversion_db": round(r, 2)}
                for a, p, v, r in zip(attributes, measured["prompts"], round_trip.tolist(), inversion.tolist())]
    by_shape = {}
    for shape in sorted({a["shape"] for a in attributes}):
        rows = [p for p in pictures if p["shape"] == shape]
        by_shape[shape] = {"count": len(rows),
                           "mean_inversion_db": round(sum(p["inversion_db"] for p in rows) / len(rows), 2),
                           "mean_vae_round_trip_db": round(sum(p["vae_round_trip_db"] for p in rows) / len(rows), 2),
                           "at_least_25_db": sum(p["inversion_db"] >= 25 for p in rows),
                           "vae_at_least_25_db": sum(p["vae_round_trip_db"] >= 25 for p in rows)}
    results["reconstruction"] = {
        "pictures": pictures, "by_shape": by_shape,
        "mean_inversion_db": round(inversion.mean().item(), 2),
        "mean_vae_round_trip_db": round(round_trip.mean().item(), 2),
        "mean_gap_to_round_trip_db": round((round_trip - inversion).mean().item(), 2),
        "max_gap_to_round_trip_db": round((round_trip - inversion).max().item(), 2),
        "at_least_25_db": editing.share((inversion >= 25).tolist()),
        "vae_at_least_25_db": editing.share((round_trip >= 25).tolist()),
        "seconds": round(time.perf_counter() - start, 1)}
    print("reconstruction:", json.dumps({k: v for k, v in results["reconstruction"].items() if k != "pictures"}),
          flush=True)

    # 2. editing by inversion, every drawn picture
    start = time.perf_counter()
    sources, source_attributes = drawn_pictures(args.edit_pictures, seed=1, shapes=editing.EDIT_SHAPES)
    targets = editing.edit_targets(source_attributes)
    reading = editing.judge_readings(judge, sources)
    results["edit_sources"] = {name: editing.share([reading[name][i] == a[name]
                                                     for i, a in enumerate(source_attributes)])
                               for name in ("shape", "color", "size", "position")}
    print("the judge reads the sources' attributes:", json.dumps(results["edit_sources"]), flush=True)
    scales = [float(s) for s in args.edit_scales.split(",")]
    edits = editing.edit_by_inversion(pipe, sources, source_attributes, targets, scales, args.steps)
    results["inversion_edit"] = {}
    for scale, pictures_edited in edits.items():
        report = editing.edit_report(judge, sources, pictures_edited, source_attributes, targets)
        results["inversion_edit"][f"{scale:g}"] = report
        print(f"inversion edit, guidance {scale:g}:", json.dumps({k: v for k, v in report.items() if k != "success"}),
              flush=True)
    results["inversion_edit_seconds"] = round(time.perf_counter() - start, 1)

    # 3. img2img on the same pictures and new prompts
    start = time.perf_counter()
    strengths = [float(s) for s in args.strengths.split(",")]
    results["img2img"] = {}
    for strength, pictures_edited in editing.edit_by_img2img(pipe, sources, source_attributes, targets, strengths,
                                                             num_inference_steps=args.steps).items():
        report = editing.edit_report(judge, sources, pictures_edited, source_attributes, targets)
        results["img2img"][f"{strength:g}"] = report
        print(f"img2img, strength {strength:g}, guidance 7.5:",
              json.dumps({k: v for k, v in report.items() if k != "success"}), flush=True)
    results["img2img_seconds"] = round(time.perf_counter() - start, 1)
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
