"""Verify the planted ground truths with exact patching and score discovery methods against them.

``python -m circuits.zoo.planted.evaluate [--models marker_copy rope_induction] [--n 64]``
prints, per model: (1) the normalised faithfulness of the true circuit, (2) that of its
complement, (3) every true edge's exact single-edge effect and the largest non-circuit
effect, then the edge-level ROC AUC of EAP, EAP-IG (inputs, activations, ...) and ACDC
against the ground truth. AUC is the Mann-Whitney statistic of ``|score|`` (average ranks
for ties) computed with :func:`scipy.stats.rankdata`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import torch

from ...evaluation import roc
from ...patching import PatchRunner, acdc, exact_edge_effects
from ...runtime import TracedModel
from ...scores import attribute
from . import PLANTED, ground_truth, load_planted, planted_task

__all__ = ["Verification", "verify", "auc", "rank_of", "score_methods", "main"]


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC of ``scores`` for the boolean ``labels`` (see :func:`circuits.evaluation.roc`)."""
    return roc(torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.bool), absolute=False).auc


def rank_of(scores: torch.Tensor, idx: torch.Tensor) -> list[int]:
    """1-based rank (descending, pessimistic for ties) of each edge ``idx`` under ``scores``."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    return [int((s >= s[i]).sum()) for i in idx.tolist()]


@dataclass
class Verification:
    name: str
    n_examples: int
    m_clean: float
    m_corrupted: float
    m_circuit: float
    m_complement: float
    accuracy_clean: float
    accuracy_circuit: float
    hf_vs_traced: float
    norm_deviation: float
    effects: dict[str, float] = field(default_factory=dict)
    max_other_effect: float = 0.0
    max_other_edge: str = ""

    @property
    def f_circuit(self) -> float:
        return (self.m_circuit - self.m_corrupted) / (self.m_clean - self.m_corrupted)

    @property
    def f_complement(self) -> float:
        return (self.m_complement - self.m_corrupted) / (self.m_clean - self.m_corrupted)

    def lines(self) -> list[str]:
        out = [
            f"model {self.name}: {self.n_examples} examples",
            f"  HF forward vs traced forward, max |Δ logit|: {self.hf_vs_traced:.2e}",
            f"  norms as constant rescalings: max |C/|x| - 1| over every norm input (clean + corrupted): {self.norm_deviation:.2e}",
            f"  m(clean) = {self.m_clean:.4f}   m(corrupted) = {self.m_corrupted:.4f}   (logit_diff)",
            f"  accuracy: clean {self.accuracy_clean:.3f}, circuit only {self.accuracy_circuit:.3f}",
            f"  (1) f(true circuit)  = {self.f_circuit:.5f}   (m = {self.m_circuit:.4f})",
            f"  (2) f(complement)    = {self.f_complement:.5f}   (m = {self.m_complement:.4f})",
            "  (3) exact single-edge effects m(N) - m(N without e):",
        ]
        out += [f"      {e:<22} {v:9.4f}" for e, v in self.effects.items()]
        out.append(f"      largest |effect| of a non-circuit edge: {self.max_other_effect:.2e} ({self.max_other_edge})")
        return out


def verify(name: str, n: int = 64, seed: int = 0, model=None) -> Verification:
    """Check the ground truth of ``name`` with exact patching (see module docstring)."""
    if model is None:
        model, _ = load_planted(name)
    task = planted_task(name, n=n, seed=seed)
    gt = ground_truth(name)
    tm = TracedModel(model)
    if tm.layout.edge_names() != gt.edge_names():
        raise ValueError(f"ground truth of {name} does not match the model's graph")
    runner = PatchRunner(tm, task, "logit_diff", batch_size=n)
    acc_runner = PatchRunner(tm, task, "accuracy", batch_size=n)
    keep = gt.in_circuit.float()
    E = gt.n_edges
    masks = torch.stack([torch.ones(E), torch.zeros(E), keep, 1.0 - keep])
    vals = runner.metric_values(masks)
    accs = acc_runner.metric_values(torch.stack([torch.ones(E), keep]))
    eff = exact_edge_effects(None, None, runner=runner)
    idx = gt.in_circuit.nonzero().flatten()
    names = gt.edge_names(idx)
    other = eff.clone()
    other[idx] = 0.0
    j = int(other.abs().argmax())
    with torch.no_grad():
        b = task.batch()
        diff = float((model(b.clean).logits - tm.run(b.clean).logits).abs().max())
    dev = norm_deviation(model, tm, task)
    return Verification(
        name=name, n_examples=n,
        m_clean=float(vals[0]), m_corrupted=float(vals[1]), m_circuit=float(vals[2]), m_complement=float(vals[3]),
        accuracy_clean=float(accs[0]), accuracy_circuit=float(accs[1]), hf_vs_traced=diff, norm_deviation=dev,
        effects=dict(zip(names, eff[idx].tolist())),
        max_other_effect=float(other.abs()[j]), max_other_edge=gt.edge_names(torch.tensor([j]))[0],
    )


def norm_deviation(model, tm: TracedModel, task) -> float:
    """Largest ``|C / |x| - 1|`` over the inputs ``x`` of every LayerNorm/RMSNorm (clean and corrupted
    prompts): how far each norm is from the constant rescaling the construction assumes."""
    gt_meta = ground_truth(task.meta["planted"]).provenance.extra
    C = float(gt_meta["const"])
    a = tm.adapter
    mods = [a.attn_norm(l) for l in range(a.n_layers)] + [a.mlp_norm(l) for l in range(a.n_layers)] + [a.final_norm()]
    worst = [0.0]

    def hook(module, args):
        x = args[0].double()
        x = x - x.mean(-1, keepdim=True) if a.family == "gpt2" else x
        worst[0] = max(worst[0], float((C / x.norm(dim=-1) - 1).abs().max()))

    handles = [m.register_forward_pre_hook(hook) for m in mods]
    try:
        with torch.no_grad():
            b = task.batch()
            model(b.clean)
            model(b.corrupted)
    finally:
        for h in handles:
            h.remove()
    return worst[0]


METHODS = [
    ("EAP", "eap", 1),
    ("EAP-IG-inputs (5)", "eap-ig-inputs", 5),
    ("EAP-IG-inputs (32)", "eap-ig-inputs", 32),
    ("EAP-IG-activations (5)", "eap-ig-activations", 5),
    ("clean-corrupted", "clean-corrupted", 1),
    ("EAP-IG-edges (5)", "eap-ig-edges", 5),
]
ACDC_THRESHOLDS = (0.01, 0.1, 1.0)


def score_methods(name: str, n: int = 64, seed: int = 0, model=None, acdc_thresholds=ACDC_THRESHOLDS,
                  acdc_kl: bool = True) -> list[dict]:
    """One row per method: AUC against the ground truth, ranks of the true edges, seconds."""
    if model is None:
        model, _ = load_planted(name)
    task = planted_task(name, n=n, seed=seed)
    gt = ground_truth(name)
    tm = TracedModel(model)
    labels = gt.in_circuit
    idx = labels.nonzero().flatten()
    rows = []
    for label, method, steps in METHODS:
        t0 = time.perf_counter()
        g = attribute(tm, task, "logit_diff", method, steps=steps, batch_size=n)
        sc = g.scores.abs()
        rows.append({"method": label, "auc": auc(sc, labels), "ranks": rank_of(sc, idx),
                     "seconds": time.perf_counter() - t0, "circuit": None, "scores": g.scores[idx].tolist()})
    t0 = time.perf_counter()
    exact = exact_edge_effects(tm, task, "logit_diff", batch_size=n)
    eff = exact.abs()
    rows.append({"method": "exact single-edge patching", "auc": auc(eff, labels), "ranks": rank_of(eff, idx),
                 "seconds": time.perf_counter() - t0, "circuit": None, "scores": exact[idx].tolist()})
    for r in rows:
        r["ratio"] = [sc / ex for sc, ex in zip(r["scores"], exact[idx].tolist())]
    for metric in ("logit_diff",) + (("kl_div",) if acdc_kl else ()):
        for tau in acdc_thresholds:
            t0 = time.perf_counter()
            res = acdc(tm, task, tau, metric, batch_size=n)
            sc = res.scores.abs()
            kept = res.graph.in_circuit
            tp = int((kept & labels).sum())
            rows.append({
                "method": f"ACDC {metric} τ={tau:g}", "auc": auc(sc, labels), "ranks": rank_of(sc, idx),
                "seconds": time.perf_counter() - t0, "scores": res.scores[idx].tolist(),
                "ratio": [x / ex for x, ex in zip(res.scores[idx].tolist(), exact[idx].tolist())],
                "circuit": {"edges": int(kept.sum()), "true_pos": tp, "recall": tp / int(labels.sum()),
                            "precision": tp / max(1, int(kept.sum()))},
            })
    return rows


def format_rows(name: str, rows: list[dict], gt_edges: list[str]) -> list[str]:
    k = len(gt_edges)
    out = [f"AUC against the ground truth of {name} ({k} true edges, by |score|); ranks of the true edges; "
           f"recall@{k} = share of true edges among the top {k}:",
           "  " + "  ".join(f"[{i}] {e}" for i, e in enumerate(gt_edges))]
    out.append(f"  {'method':<28} {'AUC':>6} {'rec@' + str(k):>6}  {'ranks of true edges':<24} {'s':>6}  circuit")
    for r in rows:
        c = r["circuit"]
        cs = "" if c is None else f"{c['edges']} edges, recall {c['recall']:.2f}, precision {c['precision']:.2f}"
        rec = sum(x <= k for x in r["ranks"]) / k
        out.append(f"  {r['method']:<28} {r['auc']:6.3f} {rec:6.2f}  {str(r['ranks']):<24} {r['seconds']:6.1f}  {cs}")
    out.append("  score / exact single-edge effect (logit_diff), per true edge:")
    for r in rows:
        if "kl_div" in r["method"]:
            continue  # KL scores are in other units
        out.append(f"  {r['method']:<28} " + " ".join(f"{x:9.2e}" for x in r["ratio"]))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="verify planted ground truths and score discovery methods against them")
    ap.add_argument("--models", nargs="*", default=sorted(PLANTED))
    ap.add_argument("--n", type=int, default=64, help="examples per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-methods", action="store_true", help="only verify the ground truths")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    for name in args.models:
        model, _ = load_planted(name)
        v = verify(name, args.n, args.seed, model=model)
        print("\n".join(v.lines()))
        if not args.no_methods:
            gt = ground_truth(name)
            rows = score_methods(name, args.n, args.seed, model=model)
            print("\n".join(format_rows(name, rows, gt.circuit_edges())))
        print()


if __name__ == "__main__":
    main()
