"""Peak-memory estimates of each method, read off the code paths that allocate (no weights, no torch).

Notation: B examples per batch, P positions, d model width, S senders, H query heads (dh wide),
F MLP width, V vocabulary, L layers, N examples of the split; ``b`` bytes per element of the
model's dtype. What each path holds at its peak:

* **parameters**: ``n_params * b``.
* **prepared runs** (:class:`~circuits.patching.PatchRunner`: exact, ACDC, edge pruning, curves,
  evaluation, faithfulness search): for *every* example of the split the corrupted run's sender
  outputs ``[S, N, P, d]`` and the clean and corrupted answer logits, and for the sparse masked
  forward the clean-minus-corrupted sender outputs (``[S, N, P, d]`` again), the corrupted residuals
  ``[L+1, N, P, d]`` and both runs' q/k/v ``[6L, N, H, P, dh]``; the batch size does not shrink it,
  only fewer examples or tokens do.
* **masked forward** of ``K = max_rows // B`` masks (``K B`` rows): the delta buffer ``[K, S, B*P*d]``
  (``RunState.buffer``) plus every sender's output kept by the run (``RunState.groups``, same size),
  plus one layer's temporaries: at worst every q/k/v receiver its own input ``[3H, K*B, P, d]``
  twice (correction and input, then the normalised input).
* **attribution** (EAP family): the clean and corrupted recordings ``[S, B, P, d]`` (2x), their
  difference in float32, and a forward whose saved activations stay until the backward
  (per layer about four residual-sized tensors, q/k/v/context, and the MLP's hidden layers);
  the backward's per-head input gradients ``[H, B, P, d]``.
* **exact effects**: the prepared runs, one recorded clean run (senders and residuals) and
  ``K`` edges at a time resumed as a plain forward of ``K B`` rows.

The estimates are upper bounds of what the code keeps alive (they assume the dense q/k/v path
of a masked forward); ``benchmarks/bench_memory.py`` compares them with measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from .shapes import ModelShape

PlanMethod = Literal["eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "eap-ig-edges", "exact",
                     "acdc", "edge-pruning", "curve"]
"""What can be planned: the discovery methods and ``curve`` (a faithfulness curve or evaluation of circuits)."""

PLAN_METHODS: tuple[str, ...] = get_args(PlanMethod)
ATTRIBUTION = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "eap-ig-edges")
PATCHING = ("exact", "acdc", "edge-pruning", "curve")
MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""= :data:`circuits.evaluation.MIB_FRACTIONS` (a test checks): a curve's circuits, evaluated together."""
F32 = 4
MLP_HIDDEN: dict[str, tuple[int, int, int]] = {"gpt2": (4, 5, 4), "gpt_neo": (4, 5, 4), "gpt_neox": (2, 2, 1)}
"""Hidden-layer-sized tensors ``[rows, P, F]`` of one MLP per family: (alive at once without autograd,
saved for the backward, saved with frozen parameters). GPT-2/GPT-Neo's tanh GELU is written in Python
(several temporaries); the gated (Llama-family) MLP keeps gate, activation, up and product."""
MLP_GATED = (3, 4, 3)


@dataclass(frozen=True)
class Estimate:
    """Peak bytes of one run: ``components`` (name, bytes, what it is) add up to ``peak``."""

    method: str
    batch: int
    tokens: int
    examples: int
    max_rows: int
    components: tuple[tuple[str, int, str], ...]

    @property
    def peak(self) -> int:
        return sum(c[1] for c in self.components)

    def table(self) -> str:
        """The components as a text table, largest first, with the total."""
        rows = sorted(self.components, key=lambda c: -c[1])
        w = max(len(c[0]) for c in rows + [("peak", 0, "")])
        lines = [f"  {name:<{w}}  {format_bytes(n):>10}  {what}" for name, n, what in rows]
        lines.append(f"  {'peak':<{w}}  {format_bytes(self.peak):>10}")
        return "\n".join(lines)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units (KiB, MiB, GiB, TiB), three significant digits."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.0f} {unit}" if abs(v) >= 100 else f"{v:.3g} {unit}"
    return f"{int(n)} B"


class _Sizes:
    """Bytes of the tensors the code paths allocate, for one shape and one sequence length."""

    def __init__(self, m: ModelShape, tokens: int) -> None:
        self.m, self.P, self.b = m, tokens, m.bytes

    def resid(self, rows: int) -> int:  # [rows, P, d]
        return rows * self.P * self.m.d_model * self.b

    def senders(self, rows: int) -> int:  # [S, rows, P, d]
        return self.m.n_senders * self.resid(rows)

    def heads(self, rows: int) -> int:  # [H, rows, P, d]: one layer's per-head outputs
        return self.m.n_heads * self.resid(rows)

    def qkv(self, rows: int) -> int:  # [rows, H, P, dh]
        return rows * self.P * self.m.n_heads * self.m.head_dim * self.b

    def hidden(self, rows: int) -> int:  # [rows, P, F]
        return rows * self.P * self.m.d_ff * self.b

    def mlp_factors(self) -> tuple[int, int, int]:
        return MLP_GATED if self.m.gated_mlp else MLP_HIDDEN.get(self.m.family, (2, 2, 1))

    def norm_extra(self, rows: int) -> int:
        """Float32 temporaries of an RMSNorm written in Python (the Llama family's)."""
        return 2 * rows * self.P * self.m.d_model * F32 if self.m.gated_mlp else 0

    def layer_transient(self, rows: int) -> int:
        """One layer of a plain forward: residuals, per-head outputs and the larger of attention and MLP."""
        m = self.m
        n_qkv = 3 + (2 if m.n_kv_heads < m.n_heads else 0) + (2 if m.rotary else 0)
        attn = n_qkv * self.qkv(rows) + rows * self.P * self.P  # q/k/v (+GQA repeats, rotary) + bool mask
        mlp = self.mlp_factors()[0] * self.hidden(rows)
        return 2 * self.resid(rows) + self.norm_extra(rows) + self.heads(rows) + self.qkv(rows) + max(attn, mlp)

    def logits(self, rows: int) -> int:
        """Answer-position logits and the metric's float32 copies."""
        return rows * self.m.vocab * (self.b + 3 * F32)

    def prepared(self, n: int) -> int:
        """Every example's corrupted sender outputs and clean/corrupted answer logits, plus what the sparse
        masked forward reads (:class:`~circuits.runtime.sparse.SparseBase`): the clean-minus-corrupted
        sender outputs, the corrupted residual entering every layer and the final one, and both runs'
        q, k, v per layer (an upper bound: families without the sparse path do not keep these)."""
        m = self.m
        base = self.senders(n) + 2 * n * m.vocab * self.b
        sparse = self.senders(n) + (m.n_layers + 1) * self.resid(n) + 6 * m.n_layers * self.qkv(n)
        return base + sparse

    def masked(self, rows: int) -> list[tuple[str, int, str]]:
        """A masked forward of ``rows`` mask x example rows (no autograd)."""
        m = self.m
        dense = 2 * 3 * m.n_heads * self.resid(rows) + self.norm_extra(3 * m.n_heads * rows)
        return [("delta buffer", self.senders(rows), "[K, S, B*P*d] sender deltas of the K masks"),
                ("run's sender outputs", self.senders(rows), "[S, K*B, P, d] kept by the masked run"),
                ("layer temporaries", max(dense, self.layer_transient(rows)) + self.logits(rows),
                 "per-receiver q/k/v inputs [3H, K*B, P, d] (x2) or a layer's activations")]

    def saved_per_layer(self, rows: int, frozen: bool) -> int:
        """Activations one layer saves for the backward (parameters frozen or not)."""
        mlp = self.mlp_factors()[2 if frozen else 1] * self.hidden(rows)
        resid = (2 if frozen else 4) * self.resid(rows) + self.norm_extra(rows)
        return resid + 4 * self.qkv(rows) + mlp

    def backward_transient(self, rows: int) -> int:
        """Per-head input gradients ``[H, B, P, d]`` of one q/k/v slot (and their VJP), MLP gradients."""
        extra = self.m.n_heads * rows * self.P * self.m.d_model * F32 if self.b < F32 else 0
        return 3 * self.heads(rows) + extra + 2 * self.hidden(rows)


def estimate(shape: ModelShape, method: str, tokens: int, batch: int, examples: int | None = None,
             max_rows: int = 512) -> Estimate:
    """Peak memory of ``method`` on ``examples`` examples of ``tokens`` positions, ``batch`` per forward.

    ``examples`` (default: one batch) matters for the methods that prepare every example's
    runs up front (exact, acdc, edge-pruning, curve); ``max_rows`` bounds mask x example rows
    per masked forward (:class:`~circuits.patching.PatchRunner`'s).
    """
    if method not in PLAN_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(PLAN_METHODS)}")
    for name, v in (("tokens", tokens), ("batch", batch), ("max_rows", max_rows)):
        if int(v) < 1:
            raise ValueError(f"{name} must be at least 1, got {v}")
    n = max(int(examples or batch), 1)
    batch = min(int(batch), n)
    z = _Sizes(shape, int(tokens))
    params = ("parameters", shape.n_params * shape.bytes, f"{shape.n_params:,} x {shape.bytes} B ({shape.dtype})")
    if method in ATTRIBUTION:
        parts = _attribution(z, method, batch)
    else:
        parts = _patching(z, method, batch, n, max_rows)
    return Estimate(method, batch, int(tokens), n, int(max_rows), (params, *parts))


def _attribution(z: _Sizes, method: str, B: int) -> list[tuple[str, int, str]]:
    m = z.m
    delta = m.n_senders * B * z.P * m.d_model * F32
    parts = [("clean + corrupted senders", 2 * z.senders(B), "[S, B, P, d] recorded twice"),
             ("sender deltas (float32)", delta, "[S, B, P, d] corrupted - clean")]
    frozen = False
    saved = m.n_layers * z.saved_per_layer(B, frozen)
    if method == "eap-ig-edges":  # a patched forward with probes: every receiver its own input, kept
        saved += m.n_layers * 2 * 3 * m.n_heads * z.resid(B)
        parts.append(("patched run's deltas + recording", 2 * z.senders(B) + delta, "per-group deltas, recorded senders, new Δ"))
    extra = {"eap-ig-inputs": 2 * z.resid(B), "eap-ig-activations": 2 * z.heads(B)}.get(method, 0)
    if extra:
        parts.append(("interpolated inputs", extra, "the interpolated sender values (a leaf)"))
    parts.append(("saved activations", saved, f"what {m.n_layers} layers keep for the backward"))
    parts.append(("forward/backward peak", max(z.senders(B) + z.layer_transient(B), z.backward_transient(B))
                  + z.logits(B), "the run's sender outputs, or per-head input gradients [H, B, P, d]"))
    return parts


def _patching(z: _Sizes, method: str, B: int, n: int, max_rows: int) -> list[tuple[str, int, str]]:
    m = z.m
    parts = [("prepared runs", z.prepared(n), f"[S, N={n}, P, d] corrupted senders + answer logits")]
    K = max(1, max_rows // B)
    if method == "edge-pruning":
        saved = m.n_layers * (3 * m.n_heads * z.resid(B) + z.saved_per_layer(B, frozen=True))
        parts += [("run's senders + deltas", 2 * z.senders(B), "[S, B, P, d] outputs and their deltas (autograd)"),
                  ("saved activations", saved, "per-receiver q/k/v inputs [3H, B, P, d] per layer, kept for the backward"),
                  ("layer temporaries", 3 * z.heads(B) * 3 + z.logits(B), "corrections being summed, their gradients")]
        return parts
    if method == "exact":
        K = min(K, m.n_edges)
        base = z.senders(B) + (m.n_layers + 1) * z.resid(B) + 3 * z.qkv(B)
        parts += [("recorded clean run", base, "[S, B, P, d] senders, L+1 residuals, one layer's q/k/v"),
                  ("edges per forward", 5 * z.resid(K * B) + z.layer_transient(K * B) + z.logits(K * B),
                   f"K={K} edges x B rows resumed as a plain forward")]
        return parts
    # a curve patches the circuits strictly between the empty and the full graph; ACDC's chains are
    # at most one receiver's in-degree long
    n_curve = sum(1 for k in MIB_FRACTIONS if 0 < int(k * m.n_edges) < m.n_edges)
    K = min(K, max(n_curve, 1) if method == "curve" else m.n_senders)
    rows = K * B
    masked = z.masked(rows)
    recording = 2 * z.senders(B) + z.layer_transient(B)  # preparing: a recorded run and its concatenation
    if recording > sum(p[1] for p in masked):
        return parts + [("recording a batch", recording, "[S, B, P, d] twice while preparing")]
    return parts + [(name, v, what.replace("K", f"K={K}", 1)) for name, v, what in masked]


def prepared_bytes(shape: ModelShape, tokens: int, examples: int) -> int:
    """Bytes of a :class:`~circuits.patching.PatchRunner`'s prepared runs of ``examples`` examples."""
    return _Sizes(shape, int(tokens)).prepared(int(examples))
