"""RetinaMask R-50-FPN (COCO detection and instance segmentation), as ported to Ascend.

See ``network.py`` (graph), ``checkpoint.py`` (weights), ``preprocess.py``,
``postprocess.py`` (the original post-processing and the port's), ``export.py`` (the port's
graph) and ``port.py`` (its hooks over the shared stages, :mod:`zoobook.stages`).
"""

from zoobook.metrics.coco import COCO_AGREEMENT_FP32, COCO_AGREEMENT_FP16
from zoobook.stages.spec import HOST_SECTIONS, PARITY_SECTIONS, PUBLISHED_SPEED, SCORE_SECTIONS, DeviceTime, GraphSpec, \
    ModelSpec, Published, Section

#: the port's graph: batch 1, input 1344x1344 (BGR minus mean, padded), no NMS inside
GRAPH = GraphSpec(
    inputs={"image": (1, 3, 1344, 1344)},
    outputs={"boxes": (1, 1000, 4), "labels": (1, 1000), "scores": (1, 1000), "masks": (1, 1000, 1, 28, 28)},
)

_PORT = "Ascend/ModelZoo-PyTorch ACL_PyTorch/contrib/cv/detection/RetinaMask README"
_TRAIN = "Ascend/ModelZoo-PyTorch PyTorch/contrib/cv/detection/RetinaMask README"
_AUTHORS = "chengyangfu/retinamask README"
_CKPT = "checkpoint npu_8P_model_0020001.pth (8 NPUs, ~20k iterations)"

#: what the book's summary shows of the records, in this order
SECTIONS = (
    *PARITY_SECTIONS,
    *SCORE_SECTIONS,
    Section("06-benchmark", "graph", "speed", "Speed of the graph",
            "Latency per call at batch 1, warm-up excluded, candidates interleaved call by call."),
    *HOST_SECTIONS,
    PUBLISHED_SPEED,
)

SPEC = ModelSpec(
    name="retinamask",
    title="RetinaMask (ResNet-50 FPN)",
    reference="chengyangfu/retinamask @ 5bcf2e7, config retinanet_mask_R-50-FPN_2x_adjust_std011_ms",
    stages=("01-data", "02-export", "03-convert", "04-infer", "05-evaluate", "06-benchmark"),
    graphs={"retinamask": GRAPH},
    published=(
        Published(_CKPT, 0.279, "bbox AP", "Ascend 310P (.om), batch 1", _PORT, 1,
                  data="COCO val2017, the port's 1344 preprocessing and host post-processing"),
        Published(_CKPT, 0.248, "segm AP", "Ascend 310P (.om), batch 1", _PORT, 1,
                  data="COCO val2017, the port's 1344 preprocessing and host post-processing"),
        Published(_CKPT, 0.288, "bbox AP", "NPU 8P training evaluation", _TRAIN, None, data="COCO val2017"),
        Published(_CKPT, 0.257, "segm AP", "NPU 8P training evaluation", _TRAIN, None, data="COCO val2017"),
        Published("the authors' 2x model", 0.394, "bbox AP", "authors (GTX 1080 Ti)", _AUTHORS, None,
                  data="COCO minival, test scale 800"),
        Published("the authors' 2x model", 0.349, "segm AP", "authors (GTX 1080 Ti)", _AUTHORS, None,
                  data="COCO minival, test scale 800"),
        Published("the port's graph, batch 1", 4.3, "FPS", "Ascend 310P", _PORT, 1),
        Published("end to end with masks, 0.139 s per image", 7.19, "FPS", "GTX 1080 Ti", _AUTHORS, 1),
    ),
    sections=SECTIONS,
    task_metrics=("bbox AP", "segm AP"),
    agreement_limits={"fp32": COCO_AGREEMENT_FP32, "fp16": COCO_AGREEMENT_FP16},
    device_time=DeviceTime.from_fps(4.3, "Ascend 310P, the port's graph at batch 1: 4.3 FPS, published"),
    profiles={
        "smoke": {"01-data": {"num_images": 2, "input_size": 320}, "02-export": {"top_k": 100},
                  "06-benchmark": {"seconds": 0.2, "min_calls": 2, "warmup": 1, "host_items": 1}},
        # a quarter of the port's pixels (half of each side) and the top 300, to bring the whole book
        # near half an hour on 2 cores: the mask head's work scales with the top-k (at 1344 and the
        # top 1000 it is 983 of the graph's 1804 GFLOP, counted from its ONNX file), the rest with the
        # pixels; one ONNX Runtime call took 5.9 s against 18.8 s at the port's size, PyTorch's 8.5 s
        # against 33.1 s (one process on 2 cores, stop 27's session, measured once). So: one
        # timed call at least and one item through the host loops. The locator runs once: its first
        # divergence is a Gather after the global top-k, which moves values without arithmetic, so
        # keeping Gather in fp32 changes nothing (a round with it left the same operators failing)
        "default": {"01-data": {"num_images": 2, "input_size": 672}, "02-export": {"top_k": 300},
                    "03-convert": {"locate": True, "suggest": 0},
                    "06-benchmark": {"min_calls": 1, "host_items": 1}},
        "full": {"01-data": {"num_images": 0, "require_real": True, "input_size": 1344},  # the port's
                 "02-export": {"require_official": True, "top_k": 1000}},
    },
)
