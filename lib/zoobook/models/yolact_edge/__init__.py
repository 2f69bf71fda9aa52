"""YolactEdge R-50-FPN (COCO instance segmentation), as ported to Ascend.

See ``network.py`` (graph), ``checkpoint.py`` (weights), ``preprocess.py``,
``postprocess.py`` (heads, priors, fast NMS, masks) and ``port.py`` (its hooks over the
shared stages, :mod:`zoobook.stages`).
"""

from zoobook.metrics.coco import COCO_AGREEMENT_FP32, COCO_AGREEMENT_FP16
from zoobook.stages.spec import HOST_SECTIONS, PARITY_SECTIONS, PUBLISHED_SPEED, SCORE_SECTIONS, DeviceTime, GraphSpec, \
    ModelSpec, Published, Section

_PORT = "Ascend/ModelZoo-PyTorch ACL_PyTorch/built-in/cv/YolactEdge_for_PyTorch README"

GRAPH = GraphSpec(
    inputs={"image": ("bs", 3, 550, 550)},
    outputs={"output0": ("bs", 256, 69, 69), "output1": ("bs", 256, 35, 35), "output2": ("bs", 256, 18, 18),
             "output3": ("bs", 256, 9, 9), "output4": ("bs", 256, 5, 5), "output5": ("bs", 138, 138, 32)},
)

#: what the book's summary shows of the records, in this order
SECTIONS = (
    *PARITY_SECTIONS,
    *SCORE_SECTIONS,
    Section("06-benchmark", "graph", "speed", "Speed of the graph",
            "Latency per call (one batch), warm-up excluded, candidates interleaved call by call."),
    Section("06-benchmark", "speedup", "derived", "Speed-up over PyTorch eager",
            "Ratio of the mean graph latencies above, per batch size."),
    *HOST_SECTIONS,
    Section("06-benchmark", "cut", "derived", "What the port's cut costs",
            "The port's graph stops before the prediction head, which then runs on the host; the whole network "
            "as one graph beside it (ONNX Runtime, batch 1, interleaved), each with its host work on one thread."),
    Section("06-benchmark", "cut_parity", "parity", "The whole graph against PyTorch"),
    PUBLISHED_SPEED,
)

SPEC = ModelSpec(
    name="yolact_edge",
    title="YolactEdge (ResNet-50 FPN)",
    reference="haotian-liu/yolact_edge @ a9a0028, config yolact_edge_resnet50_config",
    stages=("01-data", "02-export", "03-convert", "04-infer", "05-evaluate", "06-benchmark"),
    graphs={"yolact_edge": GRAPH},
    published=(
        Published("COCO mAP, repo evaluator (most likely mask mAP)", 27.96, "mAP",
                  "Ascend 310P, OM at ATC's default precision", _PORT, 1,
                  data="COCO val2017, the 4952 annotated images"),
        *(Published("throughput of the cut graph (ais_bench --loop 100)", fps, "FPS", "Ascend 310P", _PORT, bs)
          for bs, fps in ((1, 270.35), (4, 201.08), (8, 175.41), (16, 178.71), (32, 183.77), (64, 183.11))),
        Published("COCO mask mAP, TensorRT INT8/FP16", 27.0, "mAP", "Jetson AGX Xavier / RTX 2080 Ti",
                  "haotian-liu/yolact_edge README", None, data="COCO (by YOLACT convention test-dev)"),
    ),
    sections=SECTIONS,
    task_metrics=("segm mAP", "bbox mAP"),
    agreement_limits={"fp32": COCO_AGREEMENT_FP32, "fp16": COCO_AGREEMENT_FP16},
    device_time=DeviceTime.from_fps(270.35, "Ascend 310P, the cut graph at batch 1: 270.35 FPS (ais_bench --loop 100), "
                                    "published"),
    profiles={
        "smoke": {"01-data": {"num_images": 3}, "03-convert": {"batch_sizes": [1]},
                  "06-benchmark": {"batch_sizes": [1, 2], "seconds": 0.2, "min_calls": 2, "warmup": 1,
                                   "host_items": 2, "reference_batch_sizes": [1]}},
        # one warm-up and one call at least; PyTorch at batch 1 only: its batches 4 and 8 take ~8.5
        # and ~17 s a call on 2 cores (stop 27's book runs), about 50 s with their warm-ups, and
        # the guide's batch sizes are the device's, which ONNX Runtime stands in for at each.
        # 12 images: each costs about 5 s of the book (two backends in 04, the reference and the
        # scoring in 05; stop 29's book runs)
        "default": {"01-data": {"num_images": 12}, "03-convert": {"locate": True},
                    "06-benchmark": {"warmup": 1, "min_calls": 1, "reference_batch_sizes": [1]}},
        "full": {"01-data": {"num_images": 0, "require_real": True}, "02-export": {"require_official": True}},
    },
)
