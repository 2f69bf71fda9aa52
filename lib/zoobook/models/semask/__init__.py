"""SeMask-S FPN (Cityscapes semantic segmentation), as ported to Ascend.

See ``network.py`` (graph), ``checkpoint.py`` (weights), ``export.py`` (the port's graph and
its normalisation) and ``port.py`` (its hooks over the shared stages, :mod:`zoobook.stages`).
"""

from zoobook.compare import AgreementLimit
from zoobook.stages.spec import HOST_SECTIONS, PARITY_SECTIONS, PUBLISHED_SPEED, SCORE_SECTIONS, DeviceTime, GraphSpec, \
    ModelSpec, Published, Section

#: the port's graph: one static batch size per graph, whole 1024 x 2048 image, arg-max inside
GRAPH = GraphSpec(inputs={"image": ("bs", 3, 1024, 2048)}, outputs={"output": ("bs", 1024, 2048)})

_PORT = "Ascend/ModelZoo-PyTorch ACL_PyTorch/contrib/cv/segmentation/SeMask README"
_AUTHORS = "Picsart-AI-Research/SeMask-Segmentation README (SeMask-FPN)"
_CKPT = "SeMask-S FPN Cityscapes checkpoint"
_VAL = "Cityscapes val (500 images), whole 1024 x 2048 image"

#: what the book's summary shows of the records, in this order
SECTIONS = (
    *PARITY_SECTIONS,
    *SCORE_SECTIONS,
    Section("06-benchmark", "graph", "speed", "Speed and memory of the graph",
            "Latency per call (one batch), warm-up excluded, each candidate and batch size in a process of its "
            "own, with its resident memory once loaded and its peak during the calls."),
    Section("06-benchmark", "memory", "memory", "Peak memory against the batch size",
            "Per candidate: a linear fit of the peak over the batch sizes measured, extrapolated (where a port "
            "may run out of memory)."),
    Section("06-benchmark", "failures", "failures", "Runs that did not finish",
            "A process that died (for memory, most likely); the other runs went on."),
    *HOST_SECTIONS[:3],
    PUBLISHED_SPEED,
)

#: what an fp32 candidate's class maps must reach against the PyTorch reference's: the port's
#: fp32 pixel agreement (0.999, as in 03-convert's parity), no image far off, and mIoU within a
#: tenth of a point
PIXEL_AGREEMENT_FP32 = (
    AgreementLimit("pixels where", at_least=0.999),
    AgreementLimit("the same, worst image", at_least=0.99),
    AgreementLimit("mIoU difference (points)", at_most=0.1, absolute=True),
)
#: the fp16 emulation's class maps: fp16 rounding moves logits near a tie between two classes
#: to the other side; the guide's fp16 .om scored 0.59 mIoU points below the .pth (76.54 against
#: 77.13). Our limits: 99 % of the pixels the same, no image below 97 %, mIoU within 0.6 points.
PIXEL_AGREEMENT_FP16 = (
    AgreementLimit("pixels where", at_least=0.99),
    AgreementLimit("the same, worst image", at_least=0.97),
    AgreementLimit("mIoU difference (points)", at_most=0.6, absolute=True),
)

SPEC = ModelSpec(
    name="semask",
    title="SeMask-FPN (Swin-S)",
    reference="Picsart-AI-Research/SeMask-Segmentation @ f12cf00, SeMask-FPN config "
              "semfpn_semask_swin_small_patch4_window7_768x768_80k_cityscapes",
    stages=("01-data", "02-export", "03-convert", "04-infer", "05-evaluate", "06-benchmark"),
    graphs={"semask": GRAPH},
    published=(
        Published(_CKPT, 76.54, "mIoU", "Ascend 310P3 (.om), batch 1, 4 and 8 alike", _PORT, None,
                  data=f"{_VAL}, single scale"),
        Published(_CKPT, 77.13, "mIoU", "authors (GPU), single scale", _AUTHORS, None, data=f"{_VAL}, single scale"),
        Published(_CKPT, 79.14, "mIoU", "authors (GPU), multi-scale + flip", _AUTHORS, None,
                  data="Cityscapes val, ratios 0.5-1.75 and flip"),
        *(Published("the port's graph (ais_bench)", fps, "FPS", "Ascend 310P3", _PORT, bs)
          for bs, fps in ((1, 4.72), (4, 4.37), (8, 4.13))),
    ),
    sections=SECTIONS,
    task_metrics=("mIoU",),
    agreement_limits={"fp32": PIXEL_AGREEMENT_FP32, "fp16": PIXEL_AGREEMENT_FP16},
    device_time=DeviceTime.from_fps(4.72, "Ascend 310P3, the port's graph at batch 1: 4.72 FPS (ais_bench), published"),
    profiles={
        "smoke": {"01-data": {"num_images": 3, "input_size": [128, 256]}, "02-export": {"batch_sizes": [1, 2]},
                  "04-infer": {"batch_size": 2},
                  "06-benchmark": {"seconds": 0.0, "min_calls": 1, "warmup": 0, "host_items": 1}},
        # a sixteenth of the port's pixels (a quarter of each side), to bring the whole book near half
        # an hour on 2 cores: each graph call's cost scales with the pixels. PyTorch is timed at
        # batch 1 only (its batches 4 and 8, each in a process of its own with a warm-up, took about
        # 30 s in stop 27's book runs); ONNX Runtime at every batch size, with its memory fit. The
        # locator runs only where the fp16 emulation's parity fails (the stage's own default): at
        # 256 x 512 with the recipe weights it holds, and locating its 1757 operators anyway took
        # about 30 s of 03-convert to say that none fails (stop 28's book runs)
        "default": {"01-data": {"num_images": 4, "input_size": [256, 512]},
                    "06-benchmark": {"seconds": 0.0, "min_calls": 1, "warmup": 1, "host_items": 2,
                                     "reference_batch_sizes": [1]}},
        "full": {"01-data": {"num_images": 0, "require_real": True, "input_size": [1024, 2048]},
                 "02-export": {"require_official": True}},
    },
)
