#!/usr/bin/env python
"""Side-by-side benchmark of `circuits` against EAP-IG (hannamw/EAP-IG) and auto-circuit (1.0.1).

Same model (one set of weights, loaded by `transformers` for ours and converted to a TransformerLens
``HookedTransformer`` for the peers), same clean/corrupted data, same metric (logit difference at the
last position between an answer and a wrong token), through:

* EAP            -- ours ``attribute(method='eap')``, EAP-IG ``attribute(method='EAP')``,
                    auto-circuit ``mask_gradient_prune_scores(grad_function='logit', answer_function='avg_diff', mask_val=0)``;
* EAP-IG-inputs  -- ours ``attribute(method='eap-ig-inputs', steps)``, EAP-IG ``attribute(method='EAP-IG-inputs', ig_steps)``;
* exact patching -- ours ``patching.exact_edge_effects`` vs auto-circuit ``patch_mode`` (one forward per edge
                    per batch: the primitive its ``run_circuits`` uses; it has no batched single-edge effects)
                    and EAP-IG ``evaluate_graph`` per edge (what its ``attribute(method='exact')`` loops over),
                    on the same random subset of edges (``--exact-edges``; the full graph would take hours).

Every measurement runs in its own subprocess (``--worker``): one warm-up, then best of ``--reps`` timed runs
(wall clock and process CPU time), peak memory = highest RSS seen by a 2 ms sampling thread during the runs minus
the RSS just before them (psutil; ``tracemalloc`` does not see torch's CPU allocations), and the bare
forward+backward time of the `transformers` model on the same data in the same process/threads.  A peer that is
missing or fails prints "not available: <why>" and the rest of the run goes on.

Run with the peer venv (see docs/benchmarks_peers.md)::

    $PEERS_VENV/bin/python benchmarks/peers/compare.py --eap-ig-path $PEERS_DIR/EAP-IG --threads 1
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOKENIZER_DIR = REPO / "circuits" / "assets" / "gpt2-tokenizer"

# method key -> (family, implementation label)
METHODS = {
    "ours-eap": ("EAP", "ours"),
    "eapig-eap": ("EAP", "EAP-IG"),
    "ac-eap": ("EAP", "auto-circuit"),
    "ours-ig": ("EAP-IG-inputs", "ours"),
    "eapig-ig": ("EAP-IG-inputs", "EAP-IG"),
    "ours-exact": ("exact", "ours"),
    "ac-exact": ("exact", "auto-circuit"),
    "eapig-exact": ("exact", "EAP-IG"),
}
PEER_OF = {"EAP": ["eapig-eap", "ac-eap"], "EAP-IG-inputs": ["eapig-ig"], "exact": ["ac-exact", "eapig-exact"]}
OURS_OF = {"EAP": "ours-eap", "EAP-IG-inputs": "ours-ig", "exact": "ours-exact"}


# ================================================================================================ worker side
class _RssSampler:
    """Highest resident set size seen while running (sampled every ``interval`` s by a thread)."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            if rss > self.peak:
                self.peak = rss
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _trim() -> None:
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _load_common(spec: dict):
    """Model (transformers), data tensors and our graph, from the files the parent wrote."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(spec["threads"])
    torch.set_grad_enabled(True)
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], torch_dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    data = torch.load(spec["data_file"])
    return torch, model, data


def _our_batches(data: dict, batch_size: int):
    import torch
    from circuits.tasks.base import Batch

    out = []
    N, T = data["clean"].shape
    for i in range(0, N, batch_size):
        sl = slice(i, min(N, i + batch_size))
        n = sl.stop - sl.start
        out.append(
            Batch(
                clean=data["clean"][sl],
                corrupted=data["corrupted"][sl],
                attention_mask=torch.ones(n, T, dtype=torch.long),
                answers=data["answers"][sl],
                wrong=data["wrong"][sl],
                answer_pos=torch.full((n,), T - 1, dtype=torch.long),
            )
        )
    return out


def _bare_fwd_bwd(torch, model, data: dict, batch_size: int, reps: int):
    """One forward + backward (parameter grads on) of the transformers model over all batches (warm-up + best of reps)."""
    from circuits.metrics import logit_diff

    batches = _our_batches(data, batch_size)
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)

    def run():
        for b in batches:
            logits = model(input_ids=b.clean, attention_mask=b.attention_mask).logits
            loss = -logit_diff(logits, b).sum()
            loss.backward()
        model.zero_grad(set_to_none=True)

    try:
        return _time_it(run, spec_reps=reps)[0]
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


def _time_it(fn, spec_reps: int):
    """One warm-up, then best of ``spec_reps``: returns (best wall, best cpu, result of last call, walls)."""
    res = fn()
    walls, cpus = [], []
    for _ in range(spec_reps):
        w0, c0 = time.perf_counter(), time.process_time()
        res = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), res, walls


def _to_tl(torch, model, spec: dict, params_require_grad: bool = False):
    """The same weights as a TransformerLens HookedTransformer, without any weight processing, offline.

    ``HookedTransformer.from_pretrained`` only accepts official hub names; its own loading path is replayed here
    with the local folder the parent saved (``get_pretrained_model_config`` and ``get_pretrained_state_dict``
    accept a local path and, given ``hf_model``, convert those weights instead of downloading)."""
    from transformer_lens import HookedTransformer
    import transformer_lens.loading_from_pretrained as loading
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
    cfg = loading.get_pretrained_model_config(spec["model_dir"], fold_ln=False, device="cpu", dtype=torch.float32)
    n_inner = getattr(model.config, "n_inner", None)
    if model.config.model_type == "gpt2" and n_inner:  # TL's GPT-2 converter assumes d_mlp = 4 d_model
        cfg.d_mlp = int(n_inner)
    sd = loading.get_pretrained_state_dict(spec["model_dir"], cfg, model, dtype=torch.float32)
    tl = HookedTransformer(cfg, tok, move_to_device=False, default_padding_side="right")
    tl.load_and_process_state_dict(
        sd, fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False,
    )
    tl.eval()
    for p in tl.parameters():
        p.requires_grad_(params_require_grad)
    # hook points both peers need: per-head outputs, per-head q/k/v inputs, MLP inputs before the norm
    tl.set_use_attn_result(True)
    tl.set_use_split_qkv_input(True)
    tl.set_use_hook_mlp_in(True)
    if tl.cfg.n_key_value_heads is not None:
        tl.cfg.ungroup_grouped_query_attention = True
    # sanity: same logits as the transformers model
    with torch.no_grad():
        ids = torch.load(spec["data_file"])["clean"][:2]
        spec["tl_max_abs_logit_diff"] = float((model(input_ids=ids).logits - tl(ids)).abs().max())
    return tl


def _code_version() -> str:
    """Commit of our repo plus a hash of the circuits/*.py files actually imported (the tree may be dirty)."""
    import hashlib

    import circuits

    root = Path(circuits.__file__).resolve().parent
    h = hashlib.sha1()
    for f in sorted(root.rglob("*.py")):
        h.update(f.read_bytes())
    try:
        head = subprocess.run(["git", "-C", str(root.parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        head = "?"
    return f"{head or '?'} (circuits/*.py sha1 {h.hexdigest()[:10]})"


def _our_graph(model):
    from circuits.models import graph_for

    return graph_for(model)


# ----------------------------------------------------------------------------------------- method harnesses
def _h_ours(torch, model, data, spec, method):
    from circuits.scores import attribute
    from circuits.metrics import logit_diff
    from circuits.patching import exact_edge_effects

    batches = _our_batches(data, spec["batch_size"])
    if method == "ours-eap":
        def run():
            return attribute(model, batches, logit_diff, method="eap").scores.clone()
        return run, None
    if method == "ours-ig":
        def run():
            return attribute(model, batches, logit_diff, method="eap-ig-inputs", steps=spec["ig_steps"]).scores.clone()
        return run, None
    if method == "ours-exact":
        idx = torch.tensor(spec["exact_edges"], dtype=torch.long)

        def run():
            return exact_edge_effects(model, batches, logit_diff, edges=idx, max_rows=spec["max_rows"])
        return run, None
    raise KeyError(method)


def _eapig_setup(spec):
    path = spec.get("eap_ig_path")
    if not path:
        raise RuntimeError("not available: pass --eap-ig-path to a checkout of github.com/hannamw/EAP-IG")
    src = Path(path) / "src"
    if not (src / "eap" / "attribute.py").exists():
        raise RuntimeError(f"not available: {src}/eap/attribute.py not found (is --eap-ig-path an EAP-IG checkout?)")
    sys.path.insert(0, str(src))
    import torch
    import eap.attribute as eap_attr
    import eap.evaluate as eap_eval
    from eap.graph import Graph as EGraph

    # (1) EAP-IG allocates its score matrices with device='cuda' hard-coded. Rather than edit its files or fake
    # torch.cuda globally, each of its modules gets its own `torch` proxy whose `zeros` maps device='cuda' to the
    # model's device when CUDA is absent; every other attribute is the real torch module. The change is confined
    # to EAP-IG's module namespaces and any other CUDA use would still fail loudly.
    class _TorchProxy(types.ModuleType):
        def __init__(self, device):
            super().__init__("torch")
            self._device = device

        def __getattr__(self, name):
            return getattr(torch, name)

        def zeros(self, *args, device=None, **kwargs):
            if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
                device = self._device
            return torch.zeros(*args, device=device, **kwargs)

    # (2) EAP-IG tokenizes strings (`model.to_tokens(..., prepend_bos=True)`); our data are token ids (random
    # tokens do not round-trip through text), so its `tokenize_plus` is replaced, in the same namespaces, by one
    # that takes the id tensor as is: all-ones attention mask, every sequence full length.
    def tokenize_ids(model, inputs, max_length=None):
        tokens = inputs.to(model.cfg.device)
        mask = torch.ones_like(tokens)
        return tokens, mask, mask.sum(1), tokens.shape[1]

    for mod in (eap_attr, eap_eval):
        mod.torch = _TorchProxy("cpu")
        mod.tokenize_plus = tokenize_ids
    return eap_attr, eap_eval, EGraph


def _eapig_data(torch, data, batch_size):
    out = []
    N = data["clean"].shape[0]
    for i in range(0, N, batch_size):
        sl = slice(i, min(N, i + batch_size))
        label = torch.cat([data["answers"][sl], data["wrong"][sl]], dim=1)  # [B, 2]: answer, wrong
        out.append((data["clean"][sl], data["corrupted"][sl], label))
    return out


def _eapig_logit_diff(logits, input_lengths, label):
    import torch

    rows = torch.arange(logits.shape[0], device=logits.device)
    last = logits[rows, input_lengths - 1]  # [B, V]
    return last.gather(1, label[:, :1]).squeeze(1) - last.gather(1, label[:, 1:2]).squeeze(1)


def _h_eapig(torch, model, data, spec, method):
    eap_attr, eap_eval, EGraph = _eapig_setup(spec)
    # EAP-IG's EAP gets its input gradients by backpropagating through the model as loaded (parameters require
    # grad, as after from_pretrained); with frozen parameters nothing in its clean run requires grad and
    # backward() fails. So the TL model keeps trainable parameters here, as in EAP-IG's own notebooks.
    tl = _to_tl(torch, model, spec, params_require_grad=True)
    dl = _eapig_data(torch, data, spec["batch_size"])
    our = _our_graph(model)

    # EAP-IG backpropagates metric(...) as the loss and divides the score table by the number of examples:
    # loss = -sum_b logit_diff_b makes its score (corr - clean) . d(-LD)/d(in), averaged over examples (= ours).
    def loss_metric(logits, clean_logits, input_lengths, label):
        return -_eapig_logit_diff(logits, input_lengths, label).sum()

    # evaluation metric (exact): per-example -LD, so that mean(patched) - mean(clean) = LD(clean) - LD(patched).
    def eval_metric(logits, clean_logits, input_lengths, label):
        return -_eapig_logit_diff(logits, input_lengths, label)

    names = our.edge_names()

    if method in ("eapig-eap", "eapig-ig"):
        kind = "EAP" if method == "eapig-eap" else "EAP-IG-inputs"
        steps = spec["ig_steps"] if kind == "EAP-IG-inputs" else None

        def run():
            g = EGraph.from_model(tl)
            eap_attr.attribute(tl, g, dl, loss_metric, method=kind, ig_steps=steps, quiet=True)
            return g

        def extract(g):
            vals = torch.full((our.n_edges,), float("nan"))
            for i, n in enumerate(names):
                e = g.edges.get(n)
                if e is not None:
                    vals[i] = float(e.score)
            spec["peer_edges"] = len(g.edges)
            return vals

        return run, extract

    if method == "eapig-exact":
        sub = [names[i] for i in spec["exact_edges"]]

        def run():
            g = EGraph.from_model(tl)
            g.in_graph |= g.real_edge_mask
            base = eap_eval.evaluate_baseline(tl, dl, eval_metric, quiet=True).mean().item()
            out = []
            for n in sub:
                e = g.edges[n]
                e.in_graph = False
                v = eap_eval.evaluate_graph(tl, g, dl, eval_metric, quiet=True, intervention="patching", skip_clean=True)
                out.append(v.mean().item() - base)
                e.in_graph = True
            spec["peer_edges"] = len(g.edges)
            return torch.tensor(out)

        return run, None
    raise KeyError(method)


def _ac_setup():
    try:
        import auto_circuit  # noqa: F401
        from auto_circuit.data import PromptDataLoader, PromptDataset
        from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
        from auto_circuit.types import AblationType
        from auto_circuit.utils.ablation_activations import batch_src_ablations
        from auto_circuit.utils.graph_utils import patch_mode, patchable_model
        from auto_circuit.utils.tensor_ops import batch_answer_diffs
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"not available: cannot import auto-circuit ({type(e).__name__}: {e})") from e
    return types.SimpleNamespace(**locals())


def ac_name_to_ours(src: str, dest: str) -> str:
    """auto-circuit node names -> ours/EAP-IG: 'Resid Start'->'input', 'A3.7'->'a3.h7', 'MLP 3'->'m3',
    dest 'A3.7.Q'->'a3.h7<q>', 'MLP 3'->'m3', 'Resid End'->'logits'."""

    def node(n: str, is_dest: bool) -> str:
        if n == "Resid Start":
            return "input"
        if n == "Resid End":
            return "logits"
        if n.startswith("MLP "):
            return f"m{int(n[4:])}"
        if n.startswith("A"):
            parts = n[1:].split(".")
            s = f"a{int(parts[0])}.h{int(parts[1])}"
            if is_dest:
                s += f"<{parts[2].lower()}>"
            return s
        raise ValueError(f"unknown auto-circuit node {n!r}")

    return f"{node(src, False)}->{node(dest, True)}"


def _h_ac(torch, model, data, spec, method):
    ac = _ac_setup()
    tl = _to_tl(torch, model, spec)
    our = _our_graph(model)
    N = data["clean"].shape[0]
    ds = ac.PromptDataset(data["clean"], data["corrupted"], list(data["answers"]), list(data["wrong"]))
    dl = ac.PromptDataLoader(ds, seq_len=None, diverge_idx=0, batch_size=spec["batch_size"], shuffle=False)
    if N % spec["batch_size"]:
        raise RuntimeError("auto-circuit's PromptDataLoader drops the last partial batch: use --examples divisible by --batch-size")
    pm = ac.patchable_model(tl, factorized=True, slice_output="last_seq", separate_qkv=True, device=torch.device("cpu"))
    edge_by_name = {ac_name_to_ours(e.src.name, e.dest.name): e for e in pm.edges}
    spec["peer_edges"] = len(edge_by_name)
    names = our.edge_names()
    n_batches = len(dl)

    if method == "ac-eap":
        def run():
            return ac.mask_gradient_prune_scores(
                pm, dl, None, grad_function="logit", answer_function="avg_diff", mask_val=0.0,
                ablation_type=ac.AblationType.RESAMPLE, clean_corrupt="corrupt",
            )

        def extract(ps):
            vals = torch.full((our.n_edges,), float("nan"))
            for i, n in enumerate(names):
                e = edge_by_name.get(n)
                if e is not None:
                    vals[i] = float(ps[e.dest.module_name][e.patch_idx])
            # auto-circuit's loss is the batch *mean* of -LD and mask grads add up over batches:
            # raw = n_batches x (per-example average). Return it raw; the parent reports the ratio.
            spec["raw_scale_note"] = f"auto-circuit raw scores = sum over {n_batches} batches of batch means"
            return vals

        return run, extract

    if method == "ac-exact":
        sub = [edge_by_name[names[i]] for i in spec["exact_edges"]]

        def run():
            # corrupted source outputs per batch (auto-circuit's resample ablation), then per edge: set its mask
            # entry to 1 (= read the corrupted value), one forward on the clean batch, reset.
            src_outs = ac.batch_src_ablations(pm, dl, ac.AblationType.RESAMPLE, clean_corrupt="corrupt")
            sums = torch.zeros(len(sub) + 1, dtype=torch.float64)
            with torch.inference_mode():
                for batch in dl:
                    with ac.patch_mode(pm, src_outs[batch.key]):
                        out = pm(batch.clean)[pm.out_slice]
                        sums[0] += ac.batch_answer_diffs(out, batch).sum().item()
                        for j, e in enumerate(sub):
                            mask = e.patch_mask(pm)
                            mask.data[e.patch_idx] = 1.0
                            out = pm(batch.clean)[pm.out_slice]
                            mask.data[e.patch_idx] = 0.0
                            sums[j + 1] += ac.batch_answer_diffs(out, batch).sum().item()
            means = sums / N
            return (means[0] - means[1:]).float()  # LD(clean) - LD(edge patched)

        return run, None
    raise KeyError(method)


def worker_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    method = spec["method"]
    out = {"method": method, "ok": False}
    try:
        import torch  # noqa: F401

        torch, model, data = _load_common(spec)
        import circuits.scores  # noqa: F401  (import ours now, so the recorded version is what runs)
        import circuits.patching  # noqa: F401

        out["code"] = _code_version()
        out["threads"] = torch.get_num_threads()
        out["torch"] = torch.__version__
        import transformers

        out["transformers"] = transformers.__version__
        bare = _bare_fwd_bwd(torch, model, data, spec["batch_size"], spec["bare_reps"])
        out["bare_fwd_bwd_s"] = bare
        impl = METHODS[method][1]
        if impl == "ours":
            run, extract = _h_ours(torch, model, data, spec, method)
        elif impl == "EAP-IG":
            run, extract = _h_eapig(torch, model, data, spec, method)
        else:
            run, extract = _h_ac(torch, model, data, spec, method)
        if "tl_max_abs_logit_diff" in spec:
            out["tl_max_abs_logit_diff"] = spec["tl_max_abs_logit_diff"]
        _trim()
        with _RssSampler() as mem:
            before = mem.peak
            wall, cpu, res, walls = _time_it(run, spec["reps"])
        out["peak_mb"] = (mem.peak - before) / 2**20
        out["wall_s"], out["cpu_s"], out["walls"] = wall, cpu, walls
        if extract is not None:
            res = extract(res)
        elif not isinstance(res, torch.Tensor):
            res = torch.as_tensor(res)
        if method.endswith("exact") and res.numel() != len(spec["exact_edges"]):
            res = res[torch.tensor(spec["exact_edges"])]
        out["n_scored"] = int(torch.isfinite(res).sum())
        for k in ("peer_edges", "raw_scale_note"):
            if k in spec:
                out[k] = spec[k]
        torch.save(res.float().cpu(), spec["scores_file"])
        out["ok"] = True
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        out["error"] = msg if msg.startswith("not available") else f"not available: {type(e).__name__}: {msg}"
        out["traceback"] = traceback.format_exc()
    Path(spec["result_file"]).write_text(json.dumps(out))


# ================================================================================================ parent side
def _pearson(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2:
        return float("nan")
    return float(spearmanr(a, b).correlation)


def build_inputs(args, workdir: Path) -> dict:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    if args.zoo:
        from circuits import zoo

        model, tok = zoo.load(args.zoo)
        tok_dir = workdir / "tokenizer"
        tok.save_pretrained(tok_dir)
        desc = f"zoo:{args.zoo}"
    else:
        cfg = GPT2Config() if not args.quick else GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=50257)
        model = GPT2LMHeadModel(cfg).eval()
        tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
        tok_dir = TOKENIZER_DIR
        desc = f"GPT2Config(n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_embd={cfg.n_embd}) random init, seed {args.seed}"
    model_dir = workdir / "model"
    if model.config.model_type == "gpt2" and not hasattr(model.config, "n_ctx"):
        # TransformerLens' GPT-2 config converter reads `n_ctx` (present in the hub's gpt2 config.json, not in a
        # fresh GPT2Config); it is the context length, i.e. n_positions
        model.config.n_ctx = model.config.n_positions
    model.save_pretrained(model_dir, safe_serialization=True)
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(args.seed + 1)
    N, T = args.examples, args.tokens
    data = {
        "clean": torch.randint(0, V, (N, T), generator=g),
        "corrupted": torch.randint(0, V, (N, T), generator=g),
        "answers": torch.randint(0, V, (N, 1), generator=g),
        "wrong": torch.randint(0, V, (N, 1), generator=g),
    }
    torch.save(data, workdir / "data.pt")
    from circuits.models import graph_for

    graph = graph_for(model)
    perm = torch.randperm(graph.n_edges, generator=torch.Generator().manual_seed(args.seed + 2))
    exact = sorted(perm[: args.exact_edges].tolist())
    return {
        "model_dir": str(model_dir), "tokenizer_dir": str(tok_dir), "data_file": str(workdir / "data.pt"),
        "desc": desc, "n_edges": graph.n_edges, "edge_names": graph.edge_names(), "exact_edges": exact,
        "n_layers": graph.n_layers, "n_heads": graph.n_heads,
    }


def run_worker(args, inputs: dict, method: str, workdir: Path) -> dict:
    spec = {
        "method": method, "threads": args.threads, "batch_size": args.batch_size, "ig_steps": args.steps,
        "reps": args.exact_reps if method.endswith("exact") else args.reps,
        "max_rows": args.max_rows, "eap_ig_path": args.eap_ig_path, "bare_reps": args.bare_reps,
        "model_dir": inputs["model_dir"], "tokenizer_dir": inputs["tokenizer_dir"], "data_file": inputs["data_file"],
        "exact_edges": inputs["exact_edges"],
        "scores_file": str(workdir / f"{method}.scores.pt"), "result_file": str(workdir / f"{method}.json"),
    }
    spec_path = workdir / f"{method}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"})
    py = args.ours_python if METHODS[method][1] == "ours" and args.ours_python else sys.executable
    log = workdir / f"{method}.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run([py, str(Path(__file__).resolve()), "--worker", str(spec_path)], stdout=fh, stderr=subprocess.STDOUT, env=env)
    res_file = Path(spec["result_file"])
    if res_file.exists():
        res = json.loads(res_file.read_text())
    else:
        if proc.returncode < 0:
            import signal

            sig = signal.Signals(-proc.returncode).name
            why = f"worker killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
        else:
            tail = log.read_text()[-400:].strip().splitlines()
            why = f"worker exited {proc.returncode}: {tail[-1] if tail else ''}"
        res = {"method": method, "ok": False, "error": f"not available: {why}"}
    res["elapsed_s"] = time.perf_counter() - t0
    if res.get("ok"):
        import torch

        res["scores"] = torch.load(spec["scores_file"])
    print(f"  [{method}] {'ok' if res.get('ok') else res.get('error')} ({res['elapsed_s']:.0f}s, log {log})", flush=True)
    return res


def _fmt(x, nd=2, suffix=""):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}{suffix}"


def report(args, inputs: dict, results: dict) -> str:
    import numpy as np

    lines = []
    r0 = next((r for r in results.values() if r.get("ok")), {})
    lines.append(f"model: {inputs['desc']} ({inputs['n_layers']} layers x {inputs['n_heads']} heads, {inputs['n_edges']} edges)")
    lines.append(f"data: {args.examples} examples x {args.tokens} tokens (random ids), batch size {args.batch_size}; "
                 f"metric: logit diff at the last position; IG steps {args.steps}; exact: {len(inputs['exact_edges'])} random edges")
    lines.append(f"torch {r0.get('torch', '?')} threads {r0.get('threads', '?')}; transformers {r0.get('transformers', '?')}; "
                 f"timing: 1 warm-up + best of {args.reps} ({args.exact_reps} for exact, {args.bare_reps} for the bare pass), "
                 f"wall and process-CPU seconds")
    codes = sorted({r["code"] for r in results.values() if r.get("code")})
    if codes:
        lines.append(f"circuits code: {'; '.join(codes)}")
    if args.jobs > 1:
        lines.append(f"workers ran {args.jobs} at a time (they compete for cores: CPU seconds are the fairer comparison)")
    tl_err = [r.get("tl_max_abs_logit_diff") for r in results.values() if r.get("tl_max_abs_logit_diff") is not None]
    if tl_err:
        lines.append(f"TransformerLens conversion: max |logit(HF) - logit(TL)| = {max(tl_err):.2e}")
    bares = [r["bare_fwd_bwd_s"] for r in results.values() if r.get("ok") and "bare_fwd_bwd_s" in r]
    if bares:
        lines.append(f"bare forward+backward of the transformers model on the same data: best {min(bares):.3f}s "
                     f"(measured in every worker; ratios below use the worker's own)")
    lines.append("")
    hdr = ["method", "impl", "edges scored", "wall s", "cpu s", "ours/theirs (wall)", "ours/theirs (cpu)", "x fwd+bwd",
           "peak MB", "Pearson", "Spearman", "scale theirs/ours"]
    rows = []
    for fam in ("EAP", "EAP-IG-inputs", "exact"):
        ok_key = OURS_OF[fam]
        ours = results.get(ok_key)
        for key in [ok_key] + PEER_OF[fam]:
            if key not in results:
                continue
            r = results[key]
            impl = METHODS[key][1]
            if not r.get("ok"):
                why = " ".join(str(r.get("error", "not available")).split())  # one table row: no newlines
                rows.append([fam, impl, why[:240], "", "", "", "", "", "", "", "", ""])
                continue
            ratio_w = ratio_c = pr = sp = scale = None
            if key != ok_key and ours and ours.get("ok"):
                ratio_w = ours["wall_s"] / r["wall_s"]
                ratio_c = ours["cpu_s"] / r["cpu_s"]
                a, b = ours["scores"].double().numpy(), r["scores"].double().numpy()
                m = np.isfinite(a) & np.isfinite(b)
                pr, sp = _pearson(a[m], b[m]), _spearman(a[m], b[m])
                denom = float((a[m] * a[m]).sum())
                scale = float((a[m] * b[m]).sum()) / denom if denom > 0 else float("nan")
                r["matched"] = int(m.sum())
                r["max_abs_diff_normalised"] = float(np.abs(b[m] / scale - a[m]).max()) if scale else float("nan")
            rows.append([
                fam, impl, str(r["n_scored"]) + ("" if key == ok_key or "matched" not in r else f" ({r['matched']} matched)"),
                _fmt(r["wall_s"], 3), _fmt(r["cpu_s"], 3),
                "" if ratio_w is None else f"{ratio_w:.3f} ({1 / ratio_w:.1f}x faster)" if ratio_w < 1 else f"{ratio_w:.3f} ({ratio_w:.1f}x slower)",
                "" if ratio_c is None else f"{ratio_c:.3f}",
                _fmt(r["wall_s"] / r["bare_fwd_bwd_s"], 1, "x"), _fmt(r["peak_mb"], 0),
                _fmt(pr, 6), _fmt(sp, 6), "" if scale is None else f"{scale:+.4g}",
            ])
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    fmt_row = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    if not getattr(args, "report_from", None):
        lines.append(f"load average at the end of the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    lines.append(fmt_row(hdr))
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [fmt_row(r) for r in rows]
    lines.append("")
    # targets
    tg = []

    def fastest_peer(fam):
        peers = [results[k] for k in PEER_OF[fam] if k in results and results[k].get("ok")]
        return min(peers, key=lambda r: r["wall_s"]) if peers else None

    for fam, need in (("EAP", 5.0), ("EAP-IG-inputs", 5.0)):
        o, p = results.get(OURS_OF[fam]), fastest_peer(fam)
        if o and o.get("ok") and p:
            sp = p["wall_s"] / o["wall_s"]
            tg.append(f"target {fam}: ours >= {need:.0f}x faster than the fastest peer ({METHODS[p['method']][1]}): "
                      f"{sp:.2f}x (cpu {p['cpu_s'] / o['cpu_s']:.2f}x) -> {'MET' if sp >= need else 'NOT MET'}")
        else:
            tg.append(f"target {fam}: cannot evaluate (a side is not available)")
    o, p = results.get("ours-exact"), results.get("ac-exact")
    if o and o.get("ok") and p and p.get("ok"):
        sp = p["wall_s"] / o["wall_s"]
        tg.append(f"target exact: ours >= 5x faster than auto-circuit: {sp:.2f}x (cpu {p['cpu_s'] / o['cpu_s']:.2f}x) -> {'MET' if sp >= 5 else 'NOT MET'}")
    else:
        tg.append("target exact: cannot evaluate (a side is not available)")
    for fam, key in (("EAP", "eapig-eap"), ("EAP-IG-inputs", "eapig-ig")):
        o, p = results.get(OURS_OF[fam]), results.get(key)
        if o and o.get("ok") and p and p.get("ok"):
            a, b = o["scores"].double().numpy(), p["scores"].double().numpy()
            m = np.isfinite(a) & np.isfinite(b)
            pr = _pearson(a[m], b[m])
            tg.append(f"target {fam}: Pearson with EAP-IG >= 0.99: {pr:.6f} -> {'MET' if pr >= 0.99 else 'NOT MET'}")
        else:
            tg.append(f"target {fam}: correlation with EAP-IG cannot be evaluated (a side is not available)")
    lines += tg
    # details
    lines.append("")
    for key, r in results.items():
        if r.get("ok") and r.get("max_abs_diff_normalised") is not None:
            lines.append(f"{key}: max |theirs/scale - ours| = {r['max_abs_diff_normalised']:.3g} over {r['matched']} edges "
                         f"(max |ours| = {float(results[OURS_OF[METHODS[key][0]]]['scores'].abs().nan_to_num().max()):.3g}); "
                         f"wall runs {', '.join(f'{w:.3f}' for w in r['walls'])}")
        elif r.get("ok"):
            lines.append(f"{key}: wall runs {', '.join(f'{w:.3f}' for w in r['walls'])}")
    return "\n".join(lines)


def report_from(args, dirs: list) -> str:
    """Rebuild the report from kept work folders (deterministic model/data: identical files are required)."""
    import filecmp

    import torch

    first = dirs[0]
    for d in dirs[1:]:
        for f in ("data.pt", "model/model.safetensors"):
            if not filecmp.cmp(first / f, d / f, shallow=False):
                raise SystemExit(f"{d}/{f} differs from {first}/{f}: not the same model/data")
    results, spec0 = {}, None
    for d in dirs:
        for m in METHODS:
            rf, sf = d / f"{m}.json", d / f"{m}.spec.json"
            if not rf.exists():
                continue
            r = json.loads(rf.read_text())
            spec = json.loads(sf.read_text())
            spec0 = spec0 or spec
            if r.get("ok"):
                r["scores"] = torch.load(spec["scores_file"])
                r["source"] = str(d)
            if m not in results or (not results[m].get("ok") and r.get("ok")):
                results[m] = r
    if spec0 is None:
        raise SystemExit("no worker results in those folders")
    data = torch.load(first / "data.pt")
    args.examples, args.tokens = data["clean"].shape
    args.batch_size, args.steps = spec0["batch_size"], spec0["ig_steps"]
    reps = {json.loads((d / f"{m}.spec.json").read_text())["reps"] for d in dirs for m in METHODS if (d / f"{m}.spec.json").exists()}
    args.reps = args.exact_reps = max(reps)
    args.bare_reps = spec0.get("bare_reps", "?")
    from transformers import AutoConfig

    from circuits.models import graph_for

    cfg = AutoConfig.from_pretrained(first / "model")
    g = graph_for(cfg)
    inputs = {"desc": f"{cfg.model_type} {cfg.num_hidden_layers}x{cfg.num_attention_heads}, d={cfg.hidden_size} (from {first})",
              "n_layers": g.n_layers, "n_heads": g.n_heads, "n_edges": g.n_edges, "exact_edges": spec0["exact_edges"]}
    order = [m for m in METHODS if m in results]
    text = report(args, inputs, {m: results[m] for m in order})
    srcs = sorted({r.get("source") for r in results.values() if r.get("source")})
    return text + "\n\nmerged from: " + ", ".join(srcs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eap-ig-path", default=None, help="checkout of github.com/hannamw/EAP-IG (its src/ is imported)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every worker (default 1)")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16, help="examples per batch, same for every implementation")
    ap.add_argument("--steps", type=int, default=5, help="IG steps (EAP-IG-inputs)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs after one warm-up (best is reported)")
    ap.add_argument("--exact-edges", type=int, default=16, help="random edges whose exact effect is computed")
    ap.add_argument("--exact-reps", type=int, default=1, help="timed runs for the exact-patching rows")
    ap.add_argument("--max-rows", type=int, default=512, help="ours: mask x example rows per forward (exact)")
    ap.add_argument("--bare-reps", type=int, default=2, help="timed runs of the bare forward+backward (after one warm-up)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="workers run at once (each with --threads threads); >1 shortens a run on a busy machine "
                         "but the workers then compete for cores: compare CPU seconds rather than wall")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zoo", default=None, help="use a circuits zoo model instead of the random GPT-2-small")
    ap.add_argument("--quick", action="store_true", help="tiny config: 2-layer GPT-2, 16 examples x 8 tokens, 1 rep")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {','.join(METHODS)}")
    ap.add_argument("--ours-python", default=None, help="python for our workers (default: this one), e.g. $VENV/bin/python")
    ap.add_argument("--out", default=None, help="also write the report to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (model, data, scores, logs)")
    ap.add_argument("--report-from", nargs="+", default=None, metavar="DIR",
                    help="print the report from kept work folders (--keep) instead of running; later folders fill "
                         "methods that are missing or failed in earlier ones (model and data must be identical)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    if args.report_from:
        text = report_from(args, [Path(d) for d in args.report_from])
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return 0
    if args.quick:
        args.examples, args.tokens, args.reps, args.exact_reps = min(args.examples, 16), min(args.tokens, 8), 1, 1
        args.exact_edges = min(args.exact_edges, 16)
        args.batch_size = min(args.batch_size, 8)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}; valid: {', '.join(METHODS)}")
    workdir = Path(tempfile.mkdtemp(prefix="circuits-peers-"))
    print(f"work folder {workdir}", flush=True)
    inputs = build_inputs(args, workdir)
    results = {}
    if args.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as ex:
            futs = {m: ex.submit(run_worker, args, inputs, m, workdir) for m in methods}
        results = {m: futs[m].result() for m in methods}
    else:
        for m in methods:
            results[m] = run_worker(args, inputs, m, workdir)
    text = report(args, inputs, results)
    print()
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
