"""SeMask-S FPN (Cityscapes semantic segmentation), as ported to Ascend.

See ``network.py`` (graph) and ``checkpoint.py`` (weights).
"""
