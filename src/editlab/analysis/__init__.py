"""Knowledge-locating analyses of a trained model: causal tracing (ROME Sec. 2) and the survey's
three analyses, made exact by the world's dependencies. Entry: ``python evaluate.py analysis=<name>``
(:mod:`editlab.runs.analysis`). Sits above ``editing`` and ``eval`` in the package order."""
