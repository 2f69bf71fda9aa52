"""Zoo Book: reproduce, check and publish ports of neural networks to inference accelerators.

One library shared by every model's stage notebooks: ``stages/`` (the stage protocol: the run,
the port's hooks, the stages written once), ``models/`` (networks, checkpoints, pre- and
post-processing, each model's port), ``ops/``, ``data/``, ``metrics/``, ``backends/`` (a
registry), and ``export``, ``compare``, ``bench``, ``records``, ``runner``, ``book``.
"""

__version__ = "0.1.0"
