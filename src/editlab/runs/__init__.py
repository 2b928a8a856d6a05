"""The runs behind the entry scripts: ``train.py`` (:mod:`~editlab.runs.pretrain`,
:mod:`~editlab.runs.train_editor`), ``edit.py`` (:mod:`~editlab.runs.edit`) and ``evaluate.py``
(:mod:`~editlab.runs.reports`, :mod:`~editlab.runs.analysis`).

A run wires the libraries below it together (the world, a model, a method, the scorer, the metrics) and
owns what only a run has: its directory, its results file, its protocol, its exports. It is the top of
the package order (docs/architecture.md, "Package imports"), so no library package imports it and the
method library (``editing``) stays free of the world, the scorer and the metrics.
"""
