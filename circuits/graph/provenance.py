"""Typed provenance of a graph's scores and circuit: which method, metric, data and rule made them.

A :class:`Provenance` travels with every :class:`~circuits.graph.Graph`; every step that makes
a new graph records itself (:class:`Scoring` for scores, :class:`Selection` for the circuit).
It is serialised as the ``meta`` object of the graph file (``docs/formats.md``); unknown keys
in a file are kept in :attr:`Provenance.extra` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

SelectionRule = Literal["topn", "threshold", "top_fraction", "greedy", "acdc", "iterative", "faithfulness", "names"]
"""How a circuit was chosen from scores (see :mod:`circuits.circuit.prune`)."""


@dataclass(frozen=True)
class Scoring:
    """How the edge scores were computed.

    ``method``: an attribution or patching method name (``eap``, ``exact``, ``acdc``, ...);
    ``n_examples``: examples the scores average over; ``seconds``: wall time of the scoring;
    ``threshold``: ACDC's τ (None for other methods).
    """

    method: str
    metric: str = ""
    steps: int | None = None
    absolute: bool = False
    ablation: str = "patching"
    n_examples: int = 0
    seconds: float = 0.0
    threshold: float | None = None


@dataclass(frozen=True)
class Selection:
    """How the circuit was chosen from the scores: ``rule`` and its parameter(s)."""

    rule: SelectionRule
    n: int | None = None
    t: float | None = None
    k: float | None = None
    absolute: bool = True
    prune: bool = True


@dataclass(frozen=True)
class Provenance:
    """Where a graph came from. Every field is optional; ``extra`` keeps facts from other tools."""

    model: str = ""
    task: str = ""
    model_type: str = ""
    scoring: Scoring | None = None
    selection: Selection | None = None
    faithfulness: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Provenance:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def method(self) -> str:
        """The scoring method's name, or ``""``."""
        return self.scoring.method if self.scoring else ""

    def to_dict(self) -> dict[str, Any]:
        """The ``meta`` object of a graph file (JSON types only; empty fields omitted)."""
        out: dict[str, Any] = dict(self.extra)
        for k in ("model", "task", "model_type"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        if self.scoring is not None:
            out["method"] = self.scoring.method
            out["scoring"] = dataclasses.asdict(self.scoring)
        if self.selection is not None:
            out["selection"] = dataclasses.asdict(self.selection)
        if self.faithfulness is not None:
            out["faithfulness"] = self.faithfulness
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Provenance:
        """Inverse of :meth:`to_dict`; tolerant of files written by older versions."""
        d = dict(d or {})
        scoring = d.pop("scoring", None)
        method = d.pop("method", None)
        legacy = d.pop("attribution", None)  # version-1 files kept the scoring record here
        if scoring is None and isinstance(legacy, dict):
            scoring = {k: v for k, v in legacy.items() if k in Scoring.__dataclass_fields__}
        if scoring is None and method:
            scoring = {"method": method}
        sel = d.pop("selection", None)
        faith = d.pop("faithfulness", None)
        return cls(
            model=str(d.pop("model", "") or ""),
            task=str(d.pop("task", "") or ""),
            model_type=str(d.pop("model_type", "") or ""),
            scoring=Scoring(**_known(Scoring, scoring)) if isinstance(scoring, dict) and scoring.get("method") else None,
            selection=Selection(**_known(Selection, sel)) if isinstance(sel, dict) and sel.get("rule") else None,
            faithfulness=None if faith is None else float(faith),
            extra=d,
        )


def _known(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
