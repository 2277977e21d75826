"""The experiment application built on the Titans model library.

Tasks (:mod:`~titans.experiments.tasks`: MQAR, needle in a haystack, selective copying, text),
the training loop (:mod:`~titans.experiments.train`, with its run lock, metrics log, checkpoints
and distributed helpers), evaluation, ablations, the demo, reports, and the ``titans`` command
line (:mod:`~titans.experiments.cli`). It imports the library (:mod:`titans.config`,
:mod:`titans.model`, ...); the library never imports it. The public names are re-exported by
:mod:`titans`.
"""
