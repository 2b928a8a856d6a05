"""``python tests/editing/toy_train.py <train.py overrides>``: train.py with the test-only toys registered.

For subprocess tests of ``train.py task=editor method=toy_learned_step`` (real signals, DDP): the toys
are registered and ``tests/editing/conf`` (their ``method/*.yaml``) is put on Hydra's search path, then
``train.py`` runs as ``__main__``. Lightning's DDP launcher re-runs this file with the same arguments, so
every rank sees the toys too.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.editing.toys import register_toys  # noqa: E402

SEARCHPATH = f"hydra.searchpath=[file://{Path(__file__).resolve().parent / 'conf'}]"

if __name__ == "__main__":
    register_toys()
    if not any(a.startswith("hydra.searchpath=") for a in sys.argv[1:]):
        sys.argv.append(SEARCHPATH)
    # train.py's code as __main__, but sys.argv[0] stays this file: Lightning's DDP launcher re-runs sys.argv[0]
    script = ROOT / "train.py"
    exec(compile(script.read_text(), str(script), "exec"), {"__name__": "__main__", "__file__": str(script)})
