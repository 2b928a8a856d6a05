"""The community editing benchmarks (CounterFact, zsRE, KnowEdit) in their public file formats.

Each format module reads its files into :class:`~editlab.benchmarks.records.BenchmarkCase` records (one
request plus its probes, named by kind) and writes such records back in the same format, so that editlab's
world can be handed to another toolkit (``python -m editlab.world export format=<name> out=<file>``) and a
benchmark file can be read here. docs/benchmarks.md maps every source field to the probe it becomes.
"""

from editlab.benchmarks.formats import FORMATS, read_benchmark, write_benchmark
from editlab.benchmarks.records import BenchmarkCase, Probe

__all__ = ["FORMATS", "BenchmarkCase", "Probe", "read_benchmark", "write_benchmark"]
