"""Zoo Book: reproduce, check and publish ports of neural networks to inference accelerators.

One library shared by every model's stage notebooks: ``models/`` (networks, checkpoints,
pre- and post-processing, stage pipelines), ``ops/``, ``data/``, ``metrics/``, ``backends/``
and the pipeline pieces ``export``, ``compare``, ``bench``, ``records``, ``runner``, ``book``.
"""

__version__ = "0.1.0"
