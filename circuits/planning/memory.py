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
* **masked forward**, the path :class:`~circuits.patching.PatchRunner` takes. The masks per forward
  are ``K = min(max_rows // B, masks)``: a curve's circuits strictly between the empty and the full
  graph (9 of the 10 MIB fractions), ACDC's candidate removals (at most S). *Sparse* (binary masks,
  ``patching`` ablation, a family with ``additive_residual``: :mod:`circuits.runtime.sparse`): the masks'
  dense keep weights ``[K, S, R]``, a store of the CHANGED heads' and MLPs' deltas ``[N, B, P, d]``
  (a mask of ``n`` edges counted as changing ``S' (1 - exp(-n / 3S'))`` of the ``S' = S - 1`` nodes, an
  average fitted to EAP-ranked curves, not a bound), and one layer's CHANGED q/k/v inputs. *Dense*
  (``PatchRunner(sparse=False)``, mean/zero ablation, other families): the delta buffer
  ``[K, B*P, 1+S, d]`` (``RunState.buffer``: the residual being read and S deltas per row) plus the newest
  sender outputs (``RunState.groups`` lets older ones go: ``[H+1, K*B, P, d]``), plus one layer's
  temporaries: at worst every q/k/v receiver its own input ``[3H, K*B, P, d]`` twice (correction and
  input, then the normalised input). A curve's near-dense circuits (more than :data:`DENSE_SHARE` of the
  nodes changed) take that dense path even when the others take the sparse one; on the CPU
  (``device="cpu"``) at most :func:`cpu_dense_masks` of them per forward.
* **attribution** (EAP family): the clean and corrupted recordings ``[S, B, P, d]`` (2x), their
  difference in float32, and a forward whose saved activations stay until the backward
  (per layer about four residual-sized tensors, q/k/v/context, and the MLP's hidden layers);
  the backward's per-head input gradients ``[H, B, P, d]``.
* **exact effects**: the prepared runs, one recorded clean run (senders and residuals) and
  ``K`` edges at a time resumed as a plain forward of ``K B`` rows.

Attribution and the dense path are upper bounds of what the code keeps alive; the sparse path's
store depends on the circuits (an average). tests/test_planning_measured.py and
``benchmarks/bench_memory.py`` compare the estimates with measured peaks.
"""

from __future__ import annotations

import math
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
DENSE_SHARE = 0.85
"""A mask that makes more than this share of the heads and MLPs computed takes the general patched forward
(:class:`~circuits.patching.PatchRunner`'s ``DENSE_SHARE``): a curve's near-dense circuits."""
CPU_LAYER_BYTES = 32 * 2**20
"""On the CPU, a general patched forward stacks only as many masks as keep one layer's per-receiver inputs
``[3H+1, K*B, P, d]`` within this many bytes: glibc hands larger blocks back to the operating system when
they are freed (32 MiB is its ceiling for keeping them), and faulting them in again every layer cost more
than stacking the masks saved."""
RECEIVERS_PER_NODE = 1.6
"""CHANGED q/k/v inputs the sparse path computes per CHANGED node it computes (of a head's three; EAP-ranked
curves of GPT-2- and Qwen-shaped models measure 1.6-1.7)."""


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

    def prepared(self, n: int, sparse: bool = True) -> int:
        """Every example's corrupted sender outputs and clean/corrupted answer logits, plus with ``sparse``
        what the sparse masked forward reads (:class:`~circuits.runtime.sparse.SparseBase`): the
        clean-minus-corrupted sender outputs, the corrupted residual entering every layer and the final
        one, and both runs' q, k, v per layer."""
        m = self.m
        base = self.senders(n) + 2 * n * m.vocab * self.b
        extra = self.senders(n) + (m.n_layers + 1) * self.resid(n) + 6 * m.n_layers * self.qkv(n)
        return base + (extra if sparse else 0)

    def preparing(self, rows: int, sparse: bool) -> int:
        """Preparing the last batch on top of the others: the clean run's recording (senders and, for the
        sparse path, residuals) before it is reduced to the deltas, and one layer of the recorded run."""
        recorded = self.senders(rows) + (self.m.n_layers + 1) * self.resid(rows) if sparse else 0
        return recorded + self.layer_transient(rows)

    def changed_share(self, n: int) -> float:
        """The share ``1 - exp(-n / 3S')`` of the ``S' = S - 1`` heads and MLPs that a mask of ``n`` edges is counted
        as changing (see :meth:`sparse_masked`)."""
        return -math.expm1(-n / (3 * (self.m.n_senders - 1)))

    def sparse_masked(self, rows: int, kept: list[int]) -> list[tuple[str, int, str]]:
        """The sparse masked forward of ``len(kept)`` binary masks of ``kept`` edges each, ``rows`` examples
        per mask (:mod:`circuits.runtime.sparse`): only CHANGED nodes are computed, and their deltas stored.

        A node is CHANGED only when an edge into it is kept; a mask of ``n`` edges is counted as changing
        ``S' (1 - exp(-n / 3S'))`` of the ``S' = S - 1`` heads and MLPs (``n`` edges covering nodes about
        three at a time, the q, k and v of a head; an average, not a bound: it matches the counts of
        EAP-ranked curves within 10 %, benchmarks/bench_memory.py). A layer computes its share of them
        (``Nc``) and about :data:`RECEIVERS_PER_NODE` times as many q/k/v inputs ``[M, B, P, d]``; at the
        last layer's peak the store holds every row but that layer's."""
        m = self.m
        K, nodes = len(kept), m.n_senders - 1
        changed = sum(nodes * self.changed_share(n) for n in kept)  # store rows, all masks
        unit = self.resid(rows)  # one node's [B, P, d]
        nc = changed / m.n_layers  # (mask, node) pairs of one layer
        M = RECEIVERS_PER_NODE * nc
        norm = 2 if m.gated_mlp else 1  # the normalised input (RMSNorm in Python: and its unweighted product)
        w = m.d_model * m.head_dim * self.b  # one gathered projection matrix [d, dh]
        project = M * max((1 + norm) * unit, 2 * unit + 5 * w)  # inputs, normalised inputs, gathered q/k/v weights
        heads = M * unit + 2 * nc * unit + 3 * nc * self.qkv(rows) // m.n_heads  # inputs, outputs, their deltas
        mlp = K * (2 * unit + self.mlp_factors()[0] * self.hidden(rows))
        # the store's rows are written as their layer is computed: the last layer's are not yet there
        layer = max(project, heads, mlp) - changed * unit / m.n_layers
        return [("keep masks", K * m.n_senders * m.n_receivers * self.b, "[K, S, R] the masks' dense keep weights"),
                ("changed senders' store", int(changed * unit), "[N, B, P, d] deltas of the CHANGED heads and MLPs of K masks"),
                ("layer temporaries", int(max(layer, 0)) + self.logits(K * rows),
                 "one layer's CHANGED q/k/v inputs [M, B, P, d], their projections, the heads' outputs")]

    def masked(self, rows: int) -> list[tuple[str, int, str]]:
        """A masked forward of ``rows`` mask x example rows (no autograd)."""
        m = self.m
        dense = 2 * 3 * m.n_heads * self.resid(rows) + self.norm_extra(3 * m.n_heads * rows)
        return [("delta buffer", self.senders(rows) + self.resid(rows), "[K, B*P, 1+S, d] the residual read and "
                 "the sender deltas of the K masks"),
                ("run's sender outputs", self.heads(rows) + self.resid(rows),
                 "[H+1, K*B, P, d]: the newest sender groups (older ones are let go once in the buffer)"),
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


def cpu_dense_masks(n_heads: int, rows: int, tokens: int, d_model: int, element_bytes: int) -> int:
    """Masks per general patched forward on the CPU (:data:`CPU_LAYER_BYTES`), ``rows`` examples each: at least 1."""
    return max(1, CPU_LAYER_BYTES // ((3 * n_heads + 1) * rows * tokens * d_model * element_bytes))


def estimate(shape: ModelShape, method: str, tokens: int, batch: int, examples: int | None = None,
             max_rows: int = 512, sparse: bool | None = None, device: str | None = None) -> Estimate:
    """Peak memory of ``method`` on ``examples`` examples of ``tokens`` positions, ``batch`` per forward.

    ``examples`` (default: one batch) matters for the methods that prepare every example's
    runs up front (exact, acdc, edge-pruning, curve); ``max_rows`` bounds mask x example rows
    per masked forward (:class:`~circuits.patching.PatchRunner`'s). ``sparse``: whether masked
    forwards take the sparse path (default: where the family supports it, ``shape.sparse``; the
    runner does so under ``patching`` ablation); False models the dense path (``PatchRunner(sparse=False)``).
    ``device``: ``"cpu"`` models the runner's CPU limit on masks per general patched forward
    (:data:`CPU_LAYER_BYTES`); None or any other device (``"cuda:0"``) models them stacked, which is never less.
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
        parts = _patching(z, method, batch, n, max_rows, shape.sparse if sparse is None else bool(sparse) and shape.sparse,
                          device is not None and str(device).split(":")[0] == "cpu")
    return Estimate(method, batch, int(tokens), n, int(max_rows), (params, *parts))


def curve_edges(n_edges: int) -> list[int]:
    """Edges kept by each circuit a faithfulness curve patches (``int(k E)`` for the MIB fractions, strictly
    between the empty and the full graph, which need no forward); pruning can only lower them."""
    return [n for n in (int(k * n_edges) for k in MIB_FRACTIONS) if 0 < n < n_edges]


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


def _patching(z: _Sizes, method: str, B: int, n: int, max_rows: int, sparse: bool,
              cpu: bool = False) -> list[tuple[str, int, str]]:
    m = z.m
    what = "[S, N, P, d] corrupted senders + answer logits" + (", deltas, residuals, q/k/v" if sparse else "")
    parts = [("prepared runs", z.prepared(n, sparse), what.replace("N", f"N={n}", 1))]
    K = max(1, max_rows // B)
    if method == "edge-pruning":
        saved = m.n_layers * (3 * m.n_heads * z.resid(B) + z.saved_per_layer(B, frozen=True))
        parts += [("run's senders + deltas", 2 * z.senders(B), "[S, B, P, d] outputs and their deltas (autograd)"),
                  ("saved activations", saved, "per-receiver q/k/v inputs [3H, B, P, d] per layer, kept for the backward"),
                  ("layer temporaries", 3 * z.heads(B) * 3 + z.logits(B), "corrections being summed, their gradients")]
        return parts
    if method == "exact":  # resumed runs take the general (dense) path
        K = min(K, m.n_edges)
        base = z.senders(B) + (m.n_layers + 1) * z.resid(B) + 3 * z.qkv(B)
        parts += [("recorded clean run", base, "[S, B, P, d] senders, L+1 residuals, one layer's q/k/v"),
                  ("edges per forward", 5 * z.resid(K * B) + z.layer_transient(K * B) + z.logits(K * B),
                   f"K={K} edges x B rows resumed as a plain forward")]
        return parts
    # a curve patches its circuits strictly between the empty and the full graph (the K largest in the
    # worst forward); ACDC tries at most one receiver's in-degree of removals, each keeping most edges
    kept = curve_edges(m.n_edges) if method == "curve" else [m.n_edges - 1] * m.n_senders
    K = min(K, max(len(kept), 1))
    dense_k = min(K, cpu_dense_masks(m.n_heads, B, z.P, m.d_model, z.b)) if cpu else K  # per general forward
    if not sparse:
        masked = z.masked(dense_k * B)
    elif method == "curve":  # the near-dense circuits go to the general patched forward, the others sparse
        light = [k for k in sorted(kept) if z.changed_share(k) <= DENSE_SHARE]
        n_dense = len(kept) - len(light)
        paths = [z.sparse_masked(B, light[-K:])] if light else []
        paths += [z.masked(min(dense_k, n_dense) * B)] if n_dense else []
        masked = max(paths, key=lambda p: sum(c[1] for c in p)) if paths else z.sparse_masked(B, [1])
    else:
        masked = z.sparse_masked(B, sorted(kept)[-K:] or [1])
    preparing = z.preparing(B, sparse)
    if preparing > sum(p[1] for p in masked):
        return parts + [("recording a batch", preparing, "the clean run's recording while preparing")]
    return parts + [(name, v, w.replace("K", f"K={K}", 1)) for name, v, w in masked]


def prepared_bytes(shape: ModelShape, tokens: int, examples: int, sparse: bool | None = None) -> int:
    """Bytes of a :class:`~circuits.patching.PatchRunner`'s prepared runs of ``examples`` examples (with the
    sparse path's recordings where ``sparse``, default ``shape.sparse``)."""
    return _Sizes(shape, int(tokens)).prepared(int(examples), shape.sparse if sparse is None else sparse)
