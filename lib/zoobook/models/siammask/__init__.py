"""SiamMask (VOT "sharp" model): tracking and video object segmentation, as ported to Ascend.

See ``network.py`` (graphs), ``checkpoint.py`` (weights), ``tracker.py`` (the VOT tracker)
and ``export.py`` (the port's two graphs and the template-once split).
"""

from zoobook.models.spec import GraphSpec

SEARCH_OUTPUTS = {"score": (1, 10, 25, 25), "delta": (1, 20, 25, 25), "mask": (1, 3969, 25, 25),
                  "f0": (1, 64, 125, 125), "f1": (1, 256, 63, 63), "f2": (1, 512, 31, 31),
                  "corr_feature": (1, 256, 25, 25)}
KERNELS = {"kernel_cls": (1, 256, 5, 5), "kernel_loc": (1, 256, 5, 5), "kernel_mask": (1, 256, 5, 5)}

#: the port's graphs (batch 1 only: its correlation reshapes hard-code the batch)
GRAPHS = {
    "mask": GraphSpec(inputs={"template": (1, 3, 127, 127), "search": (1, 3, 255, 255)}, outputs=SEARCH_OUTPUTS),
    "refine": GraphSpec(inputs={"p0": (1, 64, 61, 61), "p1": (1, 256, 31, 31), "p2": (1, 512, 15, 15),
                                "p3": (1, 256, 1, 1)}, outputs={"mask": (1, 16129)}),
    # the template-once split: the template branch runs once per sequence
    "template": GraphSpec(inputs={"template": (1, 3, 127, 127)}, outputs=KERNELS),
    "search": GraphSpec(inputs={"search": (1, 3, 255, 255), **KERNELS}, outputs=SEARCH_OUTPUTS),
}
