"""Make the trimmed SeMask goldens the tests use, from the full set in shared/.

Source: ../shared/reference/semask/golden/ (the unmodified reference
Picsart-AI-Research/SeMask-Segmentation @ f12cf00, SeMask-FPN, run on CPU with the weight
recipe; see its README). Developers only; the tests never read ../shared:

    python tests/golden/trim_semask.py ../shared/reference/semask
"""

import json
import sys
from pathlib import Path

import numpy as np

source = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/semask")
target = Path(__file__).parent / "semask"
target.mkdir(exist_ok=True)
steps = {"feat0": 8, "feat1": 16, "feat2": 32, "feat3": 64}
for name in ("golden_1x3x256x512", "golden_2x3x128x256"):
    full = np.load(source / "golden" / f"{name}.npz")
    out = {"image_rgb_u8": full["image_rgb_u8"], "pred": full["pred"], "seg_logits_q": full["seg_logits_q"]}
    for key, step in steps.items():
        out[f"{key}_sub"] = full[key][:, ::step]
        out[f"{key}_step"] = np.int64(step)
        out[f"{key}_channel_mean"] = full[key].astype(np.float64).mean(axis=(0, 2, 3))
    for i in range(4):
        out[f"sem{i}"] = full[f"sem{i}"]
    logits = full["logits"]
    out["logits_rows_sub"] = logits[:, :, ::8]  # every 8th row of the upsampled logits
    np.savez_compressed(target / f"{name}_trimmed.npz", **out)
meta = json.loads((source / "golden" / "golden_meta.json").read_text())
(target / "weights_checksums.json").write_text(json.dumps(
    {k: {"sum": v["sum"], "first": v["first"]} for k, v in meta["weights"].items()}))
print({p.name: p.stat().st_size for p in target.iterdir()})
