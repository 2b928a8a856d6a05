"""Gradient-decomposition hypernetworks shared by the meta-learned editors (MEND, MALMEN; methods.md).

- :mod:`~editlab.editing.hyper.factors`: the rank-1 factors of a Linear layer's gradient, recorded by
  hooks: layer input ``u`` and output gradient ``delta`` per token (``dL/dW = sum_i delta_i u_i^T``);
- :mod:`~editlab.editing.hyper.norm`: running mean/std of ``[u; delta]`` (the editor's input normalisation);
- :mod:`~editlab.editing.hyper.mlp`: the identity-initialised residual low-rank blocks with per-layer
  scale and shift;
- :mod:`~editlab.editing.hyper.editor`: one editor network per weight shape, shared across the layers of
  that shape, with a learned step per layer: ``W' = W - alpha_l sum_i delta~_i u~_i^T``;
- :mod:`~editlab.editing.hyper.ridge`: MALMEN's aggregation of many edits' value shifts by ridge least squares
  (learned log-lambda per layer) and its closed-form backward;
- :mod:`~editlab.editing.hyper.meta_loss`: the meta-loss (equivalents NLL + locality KL) both editors train on.
"""
