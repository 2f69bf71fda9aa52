"""Make the trimmed YolactEdge goldens the tests use, from the full set in shared/.

Source: ../shared/reference/yolact_edge/golden/ (produced from the unmodified reference code
haotian-liu/yolact_edge @ a9a0028 with the weight recipe; see its README). The full set is
26 MB; the tests need about 4 MB of it. Run from the project root (developers only; the tests
never read ../shared):

    python tests/golden/trim_yolact_edge.py ../shared/reference/yolact_edge/golden
"""

import shutil
import sys
from pathlib import Path

import numpy as np

source = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/yolact_edge/golden")
target = Path(__file__).parent / "yolact_edge"
target.mkdir(exist_ok=True)
io, heads, detect = (np.load(source / f) for f in ("golden_io.npz", "golden_heads.npz", "golden_detect.npz"))

trimmed = {"input_sub": io["input"][0, :, ::11, ::11]}  # every 11th pixel of the preprocessed input
for i in range(6):
    out = io[f"output{i}"]
    channel_axis = 3 if i == 5 else 1
    step = 4 if out.shape[channel_axis] <= 32 or i in (2, 3, 4) else 8
    trimmed[f"output{i}_sub"] = out[..., ::step] if channel_axis == 3 else out[:, ::step]
    trimmed[f"output{i}_step"] = np.int64(step)
    trimmed[f"output{i}_channel_mean"] = out.astype(np.float64).mean(axis=(0, 1, 2) if channel_axis == 3 else (0, 2, 3))
every = 7  # priors subsampled for the dense head outputs
trimmed.update(loc=heads["loc"][0], priors=heads["priors"], decoded_boxes=heads["decoded_boxes"],
               conf_logits_sub=heads["conf_logits"][0, ::every], mask_coeffs_sub=heads["mask_coeffs"][0, ::every],
               prior_step=np.int64(every))
for key in ("det_boxes_rel", "det_classes", "det_scores", "det_coeffs", "pp_classes", "pp_scores", "pp_boxes_xyxy",
            "image_hw"):
    trimmed[key] = detect[key]
trimmed["masks138_cropped_first10"] = detect["masks138_cropped"][:10]
trimmed["masks138_cropped_sums"] = detect["masks138_cropped"].astype(np.float64).sum(axis=(1, 2))
trimmed["pp_masks_packed"] = np.packbits(detect["pp_masks"], axis=-1)
np.savez_compressed(target / "golden_trimmed.npz", **trimmed)
for name in ("input_image_bgr_427x640.png", "coco_results_example.json"):
    shutil.copyfile(source / name, target / name)
print({p.name: p.stat().st_size for p in target.iterdir()})
