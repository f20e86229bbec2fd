"""The README's picture: test frames with the fused heat map for their own sound and for another clip's sound.

    python tools/listening_figure.py --model xpl-output --dataset data/xpl-synthetic --out docs/heatmaps.jpg

Scenes are the first ``--rows`` test scenes whose sounding object the model selects with its own sound (so the
picture shows what a listening model does, not its failures; the selection rate is in the run's final table). The
other clip's sound is the listening checks' swapped sound (`xpl_hf.metrics.listening.swap_permutation`, seed 0).
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np
import torch
from PIL import Image

from xpl_hf import XPLModel, XPLProcessor
from xpl_hf.data import load_labeled
from xpl_hf.data.transforms import XPLSampleTransform
from xpl_hf.metrics.ground_truth import ground_truth_map
from xpl_hf.metrics.listening import select_objects, swap_permutation
from xpl_hf.visualization import save_overlay_grid


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="xpl-output")
    parser.add_argument("--dataset", default="data/xpl-synthetic")
    parser.add_argument("--split", default="test")
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--out", default="docs/heatmaps.jpg")
    args = parser.parse_args(argv)

    model, processor = XPLModel.from_pretrained(args.model).eval(), XPLProcessor.from_pretrained(args.model)
    data = load_labeled(args.dataset, args.split)
    donors, _ = swap_permutation(list(data["label"]), 0)
    transform = XPLSampleTransform(processor, train=False)
    images, maps, truths, titles = [], [], [], []
    for index in range(len(data)):
        row, donor = data[index], data[int(donors[index])]
        own, other = transform(row), transform(donor)
        with torch.no_grad():
            pair = model(pixel_values=own["pixel_values"][None].repeat(2, 1, 1, 1),
                         audio_log_mel=torch.stack([own["audio_log_mel"], other["audio_log_mel"]]),
                         audio_waveform=torch.stack([own["audio_waveform"], other["audio_waveform"]])).maps
        if select_objects(pair[:1], [row["objects"]])["score"][0] < 1:
            continue
        frame = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
        truth = ground_truth_map(row["boxes"], row["gt_rule"])
        for m, sound in enumerate((f"its own sound ({row['label']})", f"another clip's sound ({donor['label']})")):
            images.append(frame)
            maps.append(pair[m])
            truths.append(truth if m == 0 else np.zeros_like(truth))
            titles.append(f"{row['id']}: {sound}")
        if len(images) == 2 * args.rows:
            break
    png = save_overlay_grid(args.out + ".png", images, maps, truths, titles, columns=2)
    Image.open(png).convert("RGB").save(args.out, quality=90)
    os.remove(png)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
