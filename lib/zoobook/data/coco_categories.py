"""The 80 COCO detection categories in COCO order: (category id, name).

Class index ``k`` (0..79) of a COCO-trained detector is the position in this list; the
category id in COCO JSON is ``COCO_CATEGORIES[k][0]`` (ids 12, 26, 29, 30, 45, 66, 68, 69,
71 and 83 do not exist).
"""

_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
        *range(84, 91)]

COCO_CATEGORIES: list[tuple[int, str]] = list(zip(_IDS, _NAMES, strict=True))
COCO_CATEGORY_IDS: list[int] = list(_IDS)
