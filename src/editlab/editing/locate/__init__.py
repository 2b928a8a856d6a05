"""The locate-then-edit core shared by ROME, MEMIT and AlphaEdit (methods.md, "Locate-then-edit").

One concept per file:

- ``hooks.py``: read the input keys / output of a module at chosen token positions, or add a vector there;
- ``prefixes.py``: the deterministic context prefixes drawn from the world's corpus;
- ``rows.py``: the token rows (template x request) every kernel feeds, with the subject's last position;
- ``keys.py``: the template-averaged key k* (and the averaged output) at the subject's last token;
- ``targets.py``: the target-vector optimisation (ROME's ``compute_v`` / MEMIT's ``compute_z``);
- ``stats.py``: covariance statistics C = E[k k^T] over the corpus, cached per model, layer, sample count;
- ``passes.py``: the forward passes of the target optimisation (the full reference pass, and the tail pass
  that recomputes only what the added vector can change);
- ``solve.py``: the fp64 closed-form solvers (rank-one ROME, MEMIT, AlphaEdit's null-space projection);
- ``method.py``: what the three methods share as methods (hyper-parameters, ``prepare``, the guarded write).
"""
