"""Detection operators in plain torch: box IoU and coding, NMS (greedy and YOLACT's fast NMS)."""
