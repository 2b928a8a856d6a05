"""Open a built world: names, facts, cases and the agent, with clear errors when it is missing."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from editlab.errors import EditlabError
from editlab.utils.atomic import MARKER
from editlab.utils.jsonio import read_json
from editlab.world.agent import Agent

# measured with python -m editlab.world (bench/world.py); shown when a script builds the world it needs
BUILD_TIMES = {"wikidata_synth_tiny": "about 5 s", "wikidata_synth": "about 2 min, 2 GB of memory"}


@dataclass(frozen=True)
class World:
    """A built world directory with lazy access to its artifacts."""

    dir: Path

    @staticmethod
    def open(directory: Path | str, preset: str | None = None) -> World:
        """Open ``directory``; if it is not a complete world, say how to build it."""
        d = Path(directory)
        if not (d / MARKER).is_file():
            cmd = f"python -m editlab.world data={preset}" if preset else "python -m editlab.world data=<preset>"
            raise EditlabError(f"no built world at {d}; build it first with: {cmd}")
        return World(d)

    @staticmethod
    def from_config(data: dict, cache_dir: Path | str, build: bool = False) -> World:
        """The built world of a resolved ``data`` config node (validated) under ``cache_dir``.

        ``build``: build it first when it is absent (worlds are deterministic and cached, so the script that
        needs one can make it), saying so in one line; otherwise an absent world is an error naming the command.
        """
        import sys

        from editlab.world.build import build_world, world_dir
        from editlab.world.config import world_config

        cfg = world_config(data)
        directory = world_dir(cfg, Path(cache_dir))
        if build and not (directory / MARKER).is_file():
            name = data.get("name") or "this data config"
            print(f"building world {name} first (not built yet; {BUILD_TIMES.get(name, 'minutes')}): {directory}",
                  file=sys.stderr, flush=True)
            build_world(cfg, Path(cache_dir), progress=False)
        return World.open(directory, data.get("name"))

    @property
    def rebuild(self) -> str:
        """The fix for a damaged world file (:func:`editlab.world.tokenizer.rebuild_hint`)."""
        from editlab.world.tokenizer import rebuild_hint

        return rebuild_hint(self.dir)

    @cached_property
    def info(self) -> dict:
        return read_json(self.dir / "world.json", self.rebuild, "world description")

    @property
    def hash(self) -> str:
        return self.info["hash"]

    @cached_property
    def subject_id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.info["subjects"])}

    @cached_property
    def relation_id(self) -> dict[str, int]:
        return {r["name"]: r["id"] for r in self.info["relations"]}

    @cached_property
    def object_id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.info["objects"])}

    @cached_property
    def facts(self) -> list[dict]:
        return [json.loads(x) for x in (self.dir / "facts.jsonl").read_text().splitlines()]

    def cases(self, split: str = "eval") -> list[dict]:
        """Case records of ``split``; a malformed file is an error naming the file, line and the fix."""
        path = self.dir / ("cases.jsonl" if split == "eval" else "meta_cases.jsonl")
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                case = json.loads(line)
                if not {"case_id", "subject", "relation", "requested_object", "probes", "ids"} <= set(case):
                    raise ValueError("missing fields")
            except (json.JSONDecodeError, ValueError, TypeError) as exc:
                raise EditlabError(f"malformed case record {path}:{n} ({exc}); {self.rebuild}") from None
            out.append(case)
        return out

    @cached_property
    def agent(self) -> Agent:
        try:
            return Agent.load(str(self.dir / "agent.npz"))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise EditlabError(f"cannot read the agent {self.dir / 'agent.npz'} ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'damaged'}); {self.rebuild}") from None

    @cached_property
    def tokens_meta(self) -> dict:
        return read_json(self.dir / "tokens.json", self.rebuild, "corpus description")

    def gold(self, subject: str, relation: str, obj: str) -> float:
        """The agent's answer for (subject, relation) at ``obj`` (no edit)."""
        return self.agent.prob(self.subject_id[subject], self.relation_id[relation], self.object_id[obj])
