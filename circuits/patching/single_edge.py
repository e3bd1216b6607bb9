"""Exact single-edge effects by sparse recomputation.

Patching one edge ``s -> v`` of the full graph changes one receiver's input, hence one
node's output (a head, or an MLP); everything before that node's layer is the clean run's.
So instead of a patched forward per edge (every layer, every receiver's input rebuilt from
the sender buffer), each edge costs:

* its receiver node recomputed from ``in_v - (z_s - z_s^ref)``: one head's q, k or v
  projection and attention with the other two taken from the clean run, or one MLP;
* for a head in a sequential block, that layer's MLP on the changed residual;
* post-norm families (Gemma-2/3, OLMo-2): an edge from head ``h`` of layer ``l`` changes its
  receiver's input by ``post_l(pre_l) - post_l(pre_l - Δ_h)`` instead of ``Δ_h`` (one norm per
  edge; docs/concepts.md), and a recomputed head's layer output is ``post(pre + Δ out)``;
* the later layers as a plain forward of ``K`` edges x ``B`` examples stacked in the batch,
  the last layer at the answer positions only (``TracedModel.run`` does that when nothing
  is patched); for edges into the logits, only the final norm and unembedding.

Edges into one layer are evaluated together, ``max_rows // B`` edges per forward, whatever
their receivers: the per-edge weights are gathered, so no Python loop runs over edges.
The results equal one patched forward per edge (tests/test_patching.py checks every family).

Shapes: K edges in a chunk, B examples, P positions, d model width, H heads, dh head width.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..metrics import answer_columns
from ..parallel import is_main
from ..runtime import PlainIO, Prefix, causal_mask, default_position_ids
from .runner import PatchRunner, PreparedBatch

__all__ = ["single_edge_metric_values"]


def single_edge_metric_values(runner: PatchRunner, edges: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """Mean metric over the runner's data with each edge of ``edges`` ([n] indices) patched alone.

    Only the full graph as base (every other edge kept). Returns ``[n]`` float32, in the
    order of ``edges``.
    """
    lay = runner.layout
    all_edges = edges.long().flatten()
    share = runner.mask_share(len(all_edges))  # in a process group splitting the masks: this rank's edges
    edges = all_edges[share]
    layer_of = lay.edge_layer(edges)
    order = torch.argsort(layer_of * lay.n_receivers + lay.edge_receiver[edges], stable=True)
    total = torch.zeros(len(edges), dtype=torch.float64)
    work = []
    for p in runner.prepared:
        per = runner.rows_per_forward(p)
        for layer in layer_of.unique().tolist():
            sel = order[layer_of[order] == layer]
            for k0 in range(0, len(sel), per):
                work.append((p, layer, sel[k0:k0 + per]))
    it: Iterable = work
    if progress and is_main():
        from tqdm.auto import tqdm

        it = tqdm(work, desc="exact effects", unit="chunk")
    base_cache: dict[int, _Base] = {}
    with torch.no_grad():
        for p, layer, sel in it:
            base = base_cache.get(id(p))
            if base is None:
                base_cache.clear()  # one prepared batch at a time: work is batch-major
                base = base_cache[id(p)] = _Base(runner, p)
                columns = answer_columns([runner.metric], p.batch)  # the answer tokens' logits only, where that is all
            logits = base.patched_logits(layer, edges[sel], columns)  # [n * B, 1, V or C]
            total[sel] += runner.chunk_metric(p, logits, len(sel), columns=columns)
    out = torch.zeros(len(all_edges), dtype=torch.float64)
    out[share] = total
    return (runner.gather_masks(runner.sum_examples(out)) / runner.n_examples).float()


class _Base:
    """One prepared batch's clean run, with per-layer pieces cached as they are needed."""

    def __init__(self, runner: PatchRunner, p: PreparedBatch) -> None:
        self.tm, self.p, self.layout = runner.tm, p, runner.layout
        b = p.batch
        run = self.tm.run(b.clean, b.attention_mask, record=True, record_resid=True)
        self.z = run.senders  # [S, B, P, d]
        self.resid = run.resid  # L + 1 tensors [B, P, d]
        self.ref = p.reference  # [S, B or 1, P or 1, d]
        B, P = b.clean.shape
        dev = b.clean.device
        self.mask = causal_mask(b.attention_mask, B, P, dev)  # [B, 1, P, P]
        self.rot = self.tm.adapter.rotary(self.resid[0], default_position_ids(b.attention_mask, B, P, dev))
        self.layer_cache: dict[int, dict[str, torch.Tensor]] = {}
        self.pre: list[torch.Tensor] = []  # post-norm: per layer Σ_h z_h + b_O of the clean run, [B, P, d]
        if self.tm.adapter.post_norm:
            for layer in range(self.layout.n_layers):
                s0, s1 = self.layout.head_senders(layer)
                b_O = self.tm.adapter.attn_weights(layer).b_O
                self.pre.append(self.z[s0:s1].sum(0) + (0 if b_O is None else b_O))

    def delta(self, senders: torch.Tensor) -> torch.Tensor:
        """What patching ``s -> v`` removes from ``v``'s input, for each sender: ``[K, B, P, d]``.

        ``z_s - z_s^ref``; for a head of a post-norm layer ``l``, ``post_l(pre_l) - post_l(pre_l - Δ_h)``.
        """
        d = self.z[senders] - self.ref[senders]
        if not self.pre:
            return d
        t = self.layout.sender_time.to(senders.device)[senders]
        heads = t % 2 == 1  # heads write at stage 2l + 1
        for layer in ((t[heads] - 1) // 2).unique().tolist():  # layers, not edges
            sel = heads & (t == 2 * layer + 1)
            norm = self.tm.blocks[layer].post_attn_norm
            d[sel] = norm(self.pre[layer])[None] - norm(self.pre[layer][None] - d[sel])
        return d

    def layer(self, layer: int) -> dict[str, torch.Tensor]:
        """The clean run's q, k, v of every head at ``layer`` (``[B, H, P, dh]``, rotary applied)."""
        if layer not in self.layer_cache:
            q, k, v = PlainIO().qkv(self.tm.blocks[layer], self.resid[layer], None)
            rot = self.tm.adapter.layer_rotary(self.rot, layer)
            if rot is not None:
                rotate = self.tm.adapter.rotate
                q, k = rotate(q, *rot), rotate(k, *rot)
            self.layer_cache = {layer: {"q": q, "k": k, "v": v}}  # keep one layer only
        return self.layer_cache[layer]

    def patched_logits(self, layer: int, edges: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Answer-position logits ``[K * B, 1, V]`` (or ``C`` ``columns``) with each of the K ``edges`` (into
        ``layer``) patched alone."""
        tm, lay, b = self.tm, self.layout, self.p.batch
        B, P = b.clean.shape
        K = len(edges)
        senders, receivers = lay.edge_sender[edges], lay.edge_receiver[edges]
        delta = self.delta(senders.to(self.z.device))  # [K, B, P, d]
        rows = torch.arange(K * B, device=self.z.device)
        pos = b.answer_pos.long().repeat(K)
        if layer == lay.n_layers:  # the logits receiver reads the final residual
            final = (self.resid[-1][None] - delta).reshape(K * B, P, -1)
            return tm.adapter.unembed(final[rows, pos][:, None], columns)
        new = self._node_patched(layer, receivers.to(self.z.device) - lay.attn_receivers(layer)[0], delta)
        if layer == lay.n_layers - 1:  # nothing after this layer: the final residual is known
            return tm.adapter.unembed(new.reshape(K * B, P, -1)[rows, pos][:, None], columns)
        resume = Prefix(layer + 1, new.reshape(K * B, P, -1), self.z)
        return tm.run(b.clean.repeat(K, 1), b.attention_mask.repeat(K, 1), logit_positions=pos, logit_columns=columns,
                      resume=resume).logits

    def _node_patched(self, layer: int, local: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Residual after ``layer`` ([K, B, P, d]) when receiver ``local[k]`` of the layer reads
        its input minus ``delta[k]``.

        ``local``: [K] receiver index within the layer (the layout's q/k/v slots, then the MLP).
        """
        lay, block = self.layout, self.tm.blocks[layer]
        mlp_local = lay.mlp_receiver(layer) - lay.attn_receivers(layer)[0]
        m_base = self.z[lay.mlp_sender(layer)]  # [B, P, d]
        x0 = self.resid[layer]  # the clean residual entering the layer
        mlp_in = x0 if lay.parallel_attn_mlp else self.resid[layer + 1] - m_base  # the MLP's clean input
        new = self.resid[layer + 1].expand(len(local), *m_base.shape).clone()
        is_mlp = local == mlp_local
        if bool(is_mlp.any()):  # the MLP reads its clean input minus Δ
            new[is_mlp] += block.mlp(mlp_in[None] - delta[is_mlp]) - m_base
        att = (~is_mlp).nonzero().flatten()
        if len(att):
            head, slot = lay.qkv_slot(local[att])
            d_out = self._head_patched(layer, head, slot, delta[att])  # [Ka, B, P, d]
            if lay.parallel_attn_mlp:  # the MLP reads x0, which the head does not change
                new[att] += d_out
            elif self.pre:  # post-norm: the layer's output is post(pre + the head's change)
                new[att] = block.finish(x0[None], block.attn_output(self.pre[layer][None] + d_out), PlainIO())
            else:  # the rest of the block (Block.finish) sees the changed attention output
                new[att] = block.finish(x0[None], (mlp_in - x0)[None] + d_out, PlainIO())
        return new

    def _head_patched(self, layer: int, heads: torch.Tensor, comp: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Change of head ``heads[k]``'s output ([K, B, P, d]) when its q/k/v input (``comp[k]``
        = 0/1/2) reads the clean residual minus ``delta[k]``."""
        tm, a = self.tm, self.tm.adapter
        x = tm.blocks[layer].attn_norm(self.resid[layer][None] - delta)  # [K, B, P, d]
        y = a.project_heads(layer, x, heads, comp).transpose(0, 1)  # [B, K, P, dh]
        rot = a.layer_rotary(self.rot, layer)
        if rot is not None:  # queries and keys are rotated, values are not
            y = torch.where((comp == 2)[None, :, None, None], y, a.rotate(y, *rot))
        base = self.layer(layer)
        c = comp[None, :, None, None]
        q = torch.where(c == 0, y, base["q"][:, heads])
        k = torch.where(c == 1, y, base["k"][:, heads])
        v = torch.where(c == 2, y, base["v"][:, heads])
        ctx = a.attend(layer, q, k, v, self.mask)  # [B, K, P, dh]: the K patched heads side by side
        out = torch.einsum("bkpe,ked->kbpd", ctx, a.attn_weights(layer).W_O[heads])
        s0 = self.layout.head_senders(layer)[0]
        return out - self.z[s0 + heads]
