"""Shared pieces of the planted-circuit builders: residual subspaces, head/MLP weight
writers for GPT-2 and Llama, the word-level tokenizer and the output folder.

A planted model is written in "residual coordinates": every feature is a named set of
orthonormal directions of the residual stream (:class:`Space`), every head is four
matrices ``W_Q, W_K, W_V`` (``[d, dh]``) and ``W_O`` (``[dh, d]``) acting on the
*normalised* residual, every MLP is its input/output matrices. The writers below place
them into a standard ``transformers`` model, so the ordinary adapters trace it.

Normalisation (LayerNorm / RMSNorm cannot be removed from a standard config): every
token embedding carries a large constant component ``C * u_c`` and every norm weight is
``C / sqrt(d)``. For a residual ``x = C u_c + s`` (all directions orthogonal to the
all-ones vector, so LayerNorm's mean subtraction is the identity) the norm computes
``x * C / |x| = x (1 - |s|^2 / 2C^2 + ...)``: the identity up to a relative error of
about ``|s|^2 / 2C^2`` (~1e-4 here). ``u_c`` also serves as a bias: a weight reading
``u_c / C`` sees the constant 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

CONST = 1000.0
"""Magnitude ``C`` of the constant residual direction that keeps every norm a near-constant rescaling."""


# ---------------------------------------------------------------------- residual subspaces
@dataclass
class Space:
    """Named orthonormal subspaces of a ``d``-dimensional residual stream.

    Directions are the columns of a seeded random orthogonal matrix (so features are not
    axis-aligned); with ``mean_zero`` they are all orthogonal to the all-ones vector, which
    makes LayerNorm's mean subtraction the identity.
    """

    d: int
    seed: int
    mean_zero: bool = True
    subspaces: dict[str, tuple[int, int]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # builder facts worth recording (e.g. kernel margins)

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        m = torch.randn(self.d, self.d, generator=g, dtype=torch.float64)
        if self.mean_zero:
            m[:, 0] = 1.0
        q, _ = torch.linalg.qr(m)
        self._basis = (q[:, 1:] if self.mean_zero else q).T.contiguous()  # rows = directions
        self._used = 0

    def alloc(self, name: str, n: int) -> torch.Tensor:
        """``n`` fresh orthonormal directions ``[n, d]`` (float64), recorded under ``name``."""
        if self._used + n > self._basis.shape[0]:
            raise ValueError(f"residual stream of width {self.d} is full: cannot allocate {n} more for {name!r}")
        rows = self._basis[self._used : self._used + n]
        self.subspaces[name] = (self._used, self._used + n)
        self._used += n
        return rows

    def __getitem__(self, name: str) -> torch.Tensor:
        a, b = self.subspaces[name]
        return self._basis[a:b]

    def layout(self) -> dict[str, int]:
        """Subspace name -> number of dimensions (for the docs and the ground-truth meta)."""
        return {k: b - a for k, (a, b) in self.subspaces.items()}


@dataclass
class Head:
    """One attention head in residual coordinates (acting on the normalised residual)."""

    d: int
    dh: int
    W_Q: torch.Tensor = None  # [d, dh]
    W_K: torch.Tensor = None
    W_V: torch.Tensor = None
    W_O: torch.Tensor = None  # [dh, d]
    role: str = ""

    def __post_init__(self) -> None:
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        self.W_Q = z(self.d, self.dh) if self.W_Q is None else self.W_Q
        self.W_K = z(self.d, self.dh) if self.W_K is None else self.W_K
        self.W_V = z(self.d, self.dh) if self.W_V is None else self.W_V
        self.W_O = z(self.dh, self.d) if self.W_O is None else self.W_O


def hadamard_codes(n_tokens: int, dim: int, seed: int) -> torch.Tensor:
    """``[n_tokens, dim]`` unit codes ``±h_k / sqrt(dim)`` from a Sylvester Hadamard matrix.

    Distinct codes have inner product 0 or -1 (a code and its negation), so a ReLU/SiLU
    threshold at 1/2 reads a code out exactly. Needs ``n_tokens <= 2 * dim``.
    """
    if n_tokens > 2 * dim or dim & (dim - 1):
        raise ValueError("need a power-of-two dim with n_tokens <= 2 * dim")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < dim:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    codes = torch.cat([h, -h], 0) / math.sqrt(dim)
    perm = torch.randperm(2 * dim, generator=torch.Generator().manual_seed(seed))
    return codes[perm[:n_tokens]]


def randn(*shape: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


# ---------------------------------------------------------------------- weight writers
def _t(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32)


@torch.no_grad()
def write_gpt2(model, *, wte, wpe, heads: Sequence[Sequence[Head]], mlps, lm_head, norm_weight: float) -> None:
    """Place residual-coordinate weights into a ``GPT2LMHeadModel`` (all biases zero except MLP input).

    ``mlps[l] = (W_in [d, I], b_in [I], W_out [I, d])``.
    """
    t = model.transformer
    for p in model.parameters():
        p.zero_()
    t.wte.weight.copy_(_t(wte))
    t.wpe.weight.copy_(_t(wpe))
    d = wte.shape[1]
    for layer, block in enumerate(t.h):
        for ln in (block.ln_1, block.ln_2):
            ln.weight.fill_(norm_weight)
        for h, head in enumerate(heads[layer]):
            dh = head.dh
            cols = slice(h * dh, (h + 1) * dh)
            block.attn.c_attn.weight[:, cols] = _t(head.W_Q)
            block.attn.c_attn.weight[:, d + h * dh : d + (h + 1) * dh] = _t(head.W_K)
            block.attn.c_attn.weight[:, 2 * d + h * dh : 2 * d + (h + 1) * dh] = _t(head.W_V)
            block.attn.c_proj.weight[cols, :] = _t(head.W_O)
        W_in, b_in, W_out = mlps[layer]
        block.mlp.c_fc.weight.copy_(_t(W_in))
        block.mlp.c_fc.bias.copy_(_t(b_in))
        block.mlp.c_proj.weight.copy_(_t(W_out))
    t.ln_f.weight.fill_(norm_weight)
    model.lm_head.weight.copy_(_t(lm_head))


@torch.no_grad()
def write_llama(model, *, embed, heads: Sequence[Sequence[Head]], mlps, lm_head, norm_weight: float) -> None:
    """Place residual-coordinate weights into a ``LlamaForCausalLM`` (no biases).

    ``mlps[l] = (W_gate [d, I], W_up [d, I], W_down [I, d])``: ``out = W_down^T (silu(x W_gate) * (x W_up))``.
    """
    m = model.model
    for p in model.parameters():
        p.zero_()
    m.embed_tokens.weight.copy_(_t(embed))
    for layer, block in enumerate(m.layers):
        block.input_layernorm.weight.fill_(norm_weight)
        block.post_attention_layernorm.weight.fill_(norm_weight)
        a = block.self_attn
        for h, head in enumerate(heads[layer]):
            dh = head.dh
            rows = slice(h * dh, (h + 1) * dh)
            a.q_proj.weight[rows, :] = _t(head.W_Q.T)
            a.k_proj.weight[rows, :] = _t(head.W_K.T)
            a.v_proj.weight[rows, :] = _t(head.W_V.T)
            a.o_proj.weight[:, rows] = _t(head.W_O.T)
        W_gate, W_up, W_down = mlps[layer]
        block.mlp.gate_proj.weight.copy_(_t(W_gate.T))
        block.mlp.up_proj.weight.copy_(_t(W_up.T))
        block.mlp.down_proj.weight.copy_(_t(W_down.T))
    m.norm.weight.fill_(norm_weight)
    model.lm_head.weight.copy_(_t(lm_head))


# ---------------------------------------------------------------------- tokenizer + folder
def save_tokenizer(out: Path, vocab: Sequence[str], *, bos: str, pad: str, unk: str, max_length: int) -> None:
    """A word-level tokenizer over ``vocab`` (ids in list order), loadable with AutoTokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=unk))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, pad_token=pad, unk_token=unk, model_max_length=max_length
    )
    fast.save_pretrained(str(out))
    # name the class every transformers version knows (v5 writes its new backend name)
    cfg_path = Path(out) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def save_model_folder(out: Path, model, vocab, *, bos: str, pad: str, unk: str, ground_truth, task: dict) -> None:
    """Write config.json + model.safetensors, the tokenizer, ground_truth.json and task.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    cfg = model.config
    max_length = getattr(cfg, "n_positions", None) or cfg.max_position_embeddings
    save_tokenizer(out, vocab, bos=bos, pad=pad, unk=unk, max_length=int(max_length))
    ground_truth.save_json(out / "ground_truth.json")
    (out / "task.json").write_text(json.dumps(task, indent=2) + "\n")
    gen = out / "generation_config.json"
    if gen.exists():  # not needed, keep the folder minimal
        gen.unlink()
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope:  # transformers < 5 reads the top-level key
        cfg["rope_theta"] = rope["rope_theta"]
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for f in out.iterdir():
        f.chmod(0o644)


def positional_amplitudes(omegas: Sequence[float], peak: int, max_delta: int) -> tuple[torch.Tensor, float]:
    """Non-negative weights ``A_i`` (summing to 1) of rotary frequencies ``omegas`` that make
    ``s(Δ) = Σ A_i cos(ω_i (Δ - peak))`` peak at ``Δ = peak`` with the largest worst-case
    margin over ``Δ = 0..max_delta``; returns ``(A, margin)`` (a small linear program)."""
    import numpy as np
    from scipy.optimize import linprog

    w = np.asarray(omegas, dtype=np.float64)
    deltas = np.array([x for x in range(max_delta + 1) if x != peak])
    M = 1.0 - np.cos(np.outer(deltas - peak, w))
    n = len(w)
    res = linprog(
        np.r_[np.zeros(n), -1.0],
        A_ub=np.c_[-M, np.ones(len(deltas))],
        b_ub=np.zeros(len(deltas)),
        A_eq=np.r_[np.ones(n), 0.0][None],
        b_eq=[1.0],
        bounds=[(0, None)] * n + [(None, None)],
        method="highs",
    )
    if not res.success:
        raise RuntimeError(f"positional kernel LP failed: {res.message}")
    a = np.round(res.x[:n], 6)
    a = a / a.sum()
    margin = float((M @ a).min())
    return torch.tensor(a, dtype=torch.float64), margin
