"""editlab: model editing studied against an exact Bayesian gold standard."""

from editlab.errors import EditlabError

__all__ = ["EditlabError"]
__version__ = "0.1.0"
