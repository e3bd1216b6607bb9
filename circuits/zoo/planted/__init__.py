"""Planted-circuit models: small transformers whose task circuit is known by construction.

Each model is a standard ``transformers`` folder under ``circuits/zoo/planted/<name>/``
(config.json, model.safetensors, a word-level tokenizer) plus ``ground_truth.json`` (a
:class:`~circuits.graph.Graph` whose ``in_circuit`` edges are the true circuit) and
``task.json`` (how to generate the task). The weights are written by hand by
``circuits/zoo/planted/build_<name>.py``; docs/planted.md describes each construction and
the verification numbers.

>>> from circuits.zoo.planted import PLANTED, load_planted, planted_task, ground_truth
>>> sorted(PLANTED)
['marker_copy', 'rope_induction']
>>> model, tok = load_planted("marker_copy")        # doctest: +SKIP
>>> task = planted_task("marker_copy", n=64, seed=0)  # doctest: +SKIP
>>> gt = ground_truth("marker_copy"); gt.circuit_edges()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch

from ...graph import Graph
from ...tasks.base import Task

__all__ = ["PLANTED", "PLANTED_DIR", "PlantedInfo", "load_planted", "planted_task", "ground_truth", "task_spec"]

PLANTED_DIR = Path(__file__).resolve().parent
"""Folder holding one sub-folder per planted model."""


@dataclass(frozen=True)
class PlantedInfo:
    """One planted model: ``name``, ``family`` (transformers model_type), a one-line
    ``description``, the ``task`` kind, and the ``builder`` module that writes it."""

    name: str
    family: str
    description: str
    task: str
    builder: str

    @property
    def path(self) -> Path:
        return PLANTED_DIR / self.name


PLANTED: Mapping[str, PlantedInfo] = MappingProxyType({
    "marker_copy": PlantedInfo(
        name="marker_copy",
        family="gpt2",
        description="2-layer GPT-2 (4 heads, d=128): copy the token after a marker; previous-token head -> "
        "saturated mover (K-composition) -> ReLU decoder MLP; 6 distractor heads, distractor MLP units",
        task="marker_copy",
        builder="circuits.zoo.planted.build_marker_copy",
    ),
    "rope_induction": PlantedInfo(
        name="rope_induction",
        family="llama",
        description="2-layer Llama (RMSNorm, rotary, SwiGLU; 4 heads, d=128): induction; rotary previous-token "
        "head -> SwiGLU clean-up MLP -> saturated induction head (q from the token, k from the MLP); 6 distractor heads",
        task="induction",
        builder="circuits.zoo.planted.build_rope_induction",
    ),
})
"""The planted models, read-only: name -> :class:`PlantedInfo`."""


def _info(name: str) -> PlantedInfo:
    if name not in PLANTED:
        raise ValueError(f"unknown planted model {name!r}; planted models: {', '.join(sorted(PLANTED))}")
    info = PLANTED[name]
    if not (info.path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"planted model folder {info.path} is missing its weights; rebuild it with `python -m {info.builder}`"
        )
    return info


def load_planted(name: str, device: str | torch.device = "cpu"):
    """Load a planted model and its tokenizer (offline, float32, eval mode): ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = _info(name)
    model = AutoModelForCausalLM.from_pretrained(str(info.path), dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(info.path), local_files_only=True)
    return model.to(device).eval(), tokenizer


def ground_truth(name: str) -> Graph:
    """The true circuit of a planted model (``in_circuit`` = the ground-truth edges)."""
    return Graph.load_json(_info(name).path / "ground_truth.json")


def task_spec(name: str) -> dict:
    """The model's ``task.json``."""
    return json.loads((_info(name).path / "task.json").read_text())


# ---------------------------------------------------------------------- task generators
def _marker_copy_prompt(spec: dict, rng: random.Random) -> tuple[list[int], int, int]:
    """``<bos>`` + content tokens with one marker at p; returns (ids, p, answer)."""
    n = spec["seq_len"]
    lo, hi = spec["marker_positions"]
    ids = [spec["bos_id"]] + [rng.choice(spec["content_ids"]) for _ in range(n - 1)]
    p = rng.randint(lo, hi)
    ids[p] = spec["marker_id"]
    return ids, p, ids[p + 1]


def _gen_marker_copy(spec: dict, rng: random.Random):
    clean, p, ans = _marker_copy_prompt(spec, rng)
    while True:
        corr, p2, ans2 = _marker_copy_prompt(spec, rng)
        if p2 != p and ans2 != ans:
            return clean, corr, ans, ans2, {"marker_pos": p, "corrupted_marker_pos": p2}


def _induction_prompt(spec: dict, rng: random.Random) -> tuple[list[int], int, int]:
    """``<bos>`` + ``n_distinct`` distinct content tokens + a repeat of one of them (not the
    last); returns (ids, index i of the repeated token's first occurrence, answer = token i+1)."""
    m = spec["n_distinct"]
    toks = rng.sample(spec["content_ids"], m)
    i = rng.randint(1, m - 1)  # 1-based position of the first occurrence; the answer follows it
    ids = [spec["bos_id"]] + toks + [toks[i - 1]]
    return ids, i, toks[i]


def _gen_induction(spec: dict, rng: random.Random):
    clean, i, ans = _induction_prompt(spec, rng)
    while True:
        corr, i2, ans2 = _induction_prompt(spec, rng)
        if ans2 != ans and corr[-1] != clean[-1]:
            return clean, corr, ans, ans2, {"first_pos": i, "corrupted_first_pos": i2}


_GENERATORS: dict[str, Callable] = {"marker_copy": _gen_marker_copy, "induction": _gen_induction}


def planted_task(name: str, n: int = 64, seed: int = 0) -> Task:
    """``n`` clean/corrupted examples of the planted model's task, generated from token ids.

    Every prompt has the same length (no padding); the answer is the clean prompt's next
    token, the wrong answer the corrupted prompt's; the metric is ``logit_diff``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    spec = task_spec(name)
    gen = _GENERATORS[spec["kind"]]
    rng = random.Random(f"{name}:{seed}")
    clean, corr, answers, wrong, info = [], [], [], [], []
    for _ in range(n):
        c, k, a, w, extra = gen(spec, rng)
        clean.append(c)
        corr.append(k)
        answers.append([a])
        wrong.append([w])
        info.append(extra)
    return Task(
        name=f"planted:{name}",
        clean=[],
        corrupted=[],
        clean_ids=clean,
        corrupted_ids=corr,
        answers=answers,
        wrong=wrong,
        metric=spec["metric"],
        pad_id=spec["pad_id"],
        meta={"planted": name, "seed": seed, "kind": spec["kind"], "examples": info},
    )
