"""Make the trimmed RetinaMask goldens the tests use, from the full set in shared/.

Source: ../shared/reference/retinamask/golden/ (the unmodified reference chengyangfu/retinamask
@ 5bcf2e7 run on CPU with the weight recipe; see its README). Developers only; the tests never
read ../shared:

    python tests/golden/trim_retinamask.py ../shared/reference/retinamask
"""

import json
import sys
from pathlib import Path

import numpy as np

source = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/retinamask")
target = Path(__file__).parent / "retinamask"
target.mkdir(exist_ok=True)
full = np.load(source / "golden" / "golden_reference_256x384.npz")
steps = {**{f"body_C{i}": 16 for i in (3, 4, 5)}, **{f"fpn_P{i}": 4 for i in range(3, 8)},
         **{f"head_cls_logits_P{i}": 9 for i in range(3, 8)}, "final_mask_pooled_first2": 8, "unit_pooled": 4}
out = {}
for key in full.files:
    value = full[key]
    if key in steps:
        out[f"{key}_sub"] = value[:, ::steps[key]]
        out[f"{key}_step"] = np.int64(steps[key])
        out[f"{key}_channel_mean"] = value.astype(np.float64).mean(axis=tuple(i for i in range(value.ndim) if i != 1))
    elif key == "final_masks_pasted_uint8":
        out["final_masks_pasted_packed"] = np.packbits(value.astype(bool), axis=-1)
        out["final_masks_pasted_shape"] = np.array(value.shape)
    else:
        out[key] = value
np.savez_compressed(target / "golden_trimmed.npz", **out)
checksums = json.loads((source / "golden" / "weights_checksums.json").read_text())
entries = checksums.get("weights", checksums)
(target / "weights_checksums.json").write_text(json.dumps(
    {k: {"sum": v["sum"], "first4": v["first4"]} for k, v in entries.items()}))
print({p.name: p.stat().st_size for p in target.iterdir()})
