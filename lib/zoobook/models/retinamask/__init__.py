"""RetinaMask R-50-FPN (COCO detection and instance segmentation), as ported to Ascend.

See ``network.py`` (graph), ``checkpoint.py`` (weights) and ``postprocess.py`` (the
original post-processing and the port's).
"""

from zoobook.models.spec import GraphSpec

#: the port's graph: batch 1, input 1344x1344 (BGR minus mean, padded), no NMS inside
GRAPH = GraphSpec(
    inputs={"image": (1, 3, 1344, 1344)},
    outputs={"boxes": (1, 1000, 4), "labels": (1, 1000), "scores": (1, 1000), "masks": (1, 1000, 1, 28, 28)},
)
