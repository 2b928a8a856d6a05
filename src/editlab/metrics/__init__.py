"""torchmetrics metrics of edits (evaluation.md), each a mean per named group reduced by sum under DDP."""

from editlab.metrics.coherence import AgentCoherence, ProbabilisticCoherence
from editlab.metrics.consistency import Consistency, case_consistency, stated_objects
from editlab.metrics.editing import EditSuccess, Portability
from editlab.metrics.fluency import Fluency, case_fluency, ngram_entropy, words
from editlab.metrics.generative import GenerativeAccuracy
from editlab.metrics.grouped import GroupedMean
from editlab.metrics.locality import Agreement, Locality, next_token_kl
from editlab.metrics.logical import LOGIC_NAMES, LabelMass, LogicalCoherence, logical_gaps

__all__ = [
    "LOGIC_NAMES", "AgentCoherence", "Agreement", "Consistency", "EditSuccess", "Fluency",
    "GenerativeAccuracy", "GroupedMean", "LabelMass", "Locality", "LogicalCoherence", "Portability",
    "ProbabilisticCoherence", "case_consistency", "case_fluency", "logical_gaps", "next_token_kl", "ngram_entropy",
    "stated_objects", "words",
]
