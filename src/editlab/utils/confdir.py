"""Where the Hydra configs (``conf/``) are, for the code that composes them outside an entry script.

The entry scripts find ``conf/`` next to themselves (``@hydra.main(config_path="conf")``). Library code
that composes a config itself (``python -m editlab.world``, a method's hyper-parameters as ``edit.py``
gives them) looks it up here, in this order:

1. ``$EDITLAB_CONF``, when set: any copy of the configs, for an installed package run outside a checkout;
2. the checkout the package is imported from: the nearest directory above the package holding
   ``conf/edit.yaml`` (``pip install -e .``, or ``src/`` on the path), found by walking up, so no depth
   of the source layout is assumed;
3. ``conf/`` in the working directory (an installed package run from a checkout).
"""

from __future__ import annotations

import os
from pathlib import Path

from editlab.errors import EditlabError

MARKER = "edit.yaml"  # a file every copy of the configs has


def conf_dir() -> Path:
    """The ``conf/`` directory to compose from (see the module docstring for the order)."""
    env = os.environ.get("EDITLAB_CONF")
    if env:
        if not (Path(env) / MARKER).is_file():
            raise EditlabError(f"EDITLAB_CONF={env} holds no {MARKER}; point it to the repository's conf/ directory")
        return Path(env).resolve()
    package = Path(__file__).resolve().parent.parent
    for parent in package.parents:
        if (parent / "conf" / MARKER).is_file():
            return parent / "conf"
    cwd = Path.cwd() / "conf"
    if (cwd / MARKER).is_file():
        return cwd.resolve()
    raise EditlabError("cannot find the configs (conf/): run from the repository checkout or set EDITLAB_CONF to "
                       "its conf/ directory")
