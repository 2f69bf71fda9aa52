"""Make the trimmed SiamMask goldens the tests use, from the full set in shared/.

Source: ../shared/reference/siammask/golden/ (the unmodified reference foolwood/SiamMask @
0eaac33 with the weight recipe; see its README). Developers only; the tests never read
../shared:

    python tests/golden/trim_siammask.py ../shared/reference/siammask
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np

source = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/siammask")
golden = source / "golden"
target = Path(__file__).parent / "siammask"
target.mkdir(exist_ok=True)
io, mid = np.load(golden / "io.npz"), np.load(golden / "intermediates.npz")
steps = {"score": 1, "delta": 1, "mask": 16, "corr_feature": 4, "template_feature": 1, "search_feature": 8,
         "f0": 8, "f1": 16, "f2": 16, "f3": 32}
out = {"template": io["template"].astype(np.uint8), "search": io["search"].astype(np.uint8)}
for name, step in steps.items():
    full = io[name] if name in io.files else mid[name]
    out[f"{name}_sub"] = full[:, ::step]
    out[f"{name}_step"] = np.int64(step)
    out[f"{name}_channel_mean"] = full.astype(np.float64).mean(axis=(0, 2, 3))
for key in io.files:
    if key.startswith("refine_"):
        out[key] = io[key]
np.savez_compressed(target / "golden_trimmed.npz", **out)
shutil.copyfile(golden / "tracker.npz", target / "tracker.npz")
checksums = json.loads((golden / "weights_checksums.json").read_text())["weights"]
(target / "weights_checksums.json").write_text(json.dumps(
    {k: {"sum": v["sum"], "first4": v["first4"]} for k, v in checksums.items()}))
base = json.loads((source / "state_dict_base.json").read_text())
(target / "state_dict_base_keys.json").write_text(json.dumps([[e["key"], e["shape"]] for e in base["entries"]]))
shutil.copytree(golden / "eval", target / "eval", dirs_exist_ok=True)
print({p.name: p.stat().st_size for p in target.iterdir()})
