#!/usr/bin/env python
"""Round trip of EAP-IG / MIB graph files through EAP-IG's own ``Graph.from_json`` / ``to_json``.

Checks, on GPT-2 small's shape (12 x 12, 32,491 edges) and on a parallel-block shape:

1. ours -> EAP-IG: a file written by ``circuits.render.mib.save_mib`` is read by EAP-IG's
   ``Graph.from_json``; EAP-IG's ``to_json`` of it is read back by ``circuits.load`` with the same
   scores and circuit, and is the same JSON object as ours (keys, edge order, values).
2. EAP-IG -> ours: a graph built by EAP-IG's ``Graph.from_model`` with random scores and
   ``apply_topn`` is written by EAP-IG and read by ``circuits.load`` edge for edge.
3. MIB's rule for sizing circuits: for each MIB edge budget ``k``, EAP-IG's
   ``apply_topn(int(k * E), absolute=True)`` (with its default pruning, as MIB's
   ``evaluate_area_under_curve``) and ``circuits export-mib --circuits``
   (``circuits.render.mib_submission.mib_circuits``) both stay within ``k * E`` edges, and ours is
   EAP-IG's with the remaining dangling edges removed. (EAP-IG's ``prune`` can stop after one pass:
   its loop ends when the node set did not change, which is checked before edges are removed, so
   an edge whose sender loses its last in-edge in that pass stays. Its circuits are then supersets
   of ours; the script prints both sizes.)

EAP-IG is not on PyPI. Point ``--eap-ig-path`` at a checkout of github.com/hannamw/EAP-IG (its
``src/`` is put on ``sys.path``); it needs ``einops`` and ``matplotlib``. ``transformer_lens`` is
imported by EAP-IG's graph module but not used for graphs built from a config dict; when it is not
installed a stub module stands in for it. Run from the repository root::

    python benchmarks/peers/check_mib_roundtrip.py --eap-ig-path /path/to/EAP-IG

Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def import_eap_graph(path: Path):
    """EAP-IG's ``eap.graph`` module from a checkout (``src/eap`` or ``eap``)."""
    for src in (path / "src", path):
        if (src / "eap" / "graph.py").exists():
            sys.path.insert(0, str(src))
            break
    else:
        raise SystemExit(f"no eap/graph.py under {path} (is --eap-ig-path an EAP-IG checkout?)")
    try:
        import transformer_lens  # noqa: F401
    except ImportError:  # only HookedTransformer(Config) isinstance checks use it; configs here are dicts
        stub = types.ModuleType("transformer_lens")
        stub.HookedTransformer = type("HookedTransformer", (), {})
        stub.HookedTransformerConfig = type("HookedTransformerConfig", (), {})
        sys.modules["transformer_lens"] = stub
    import eap.graph

    return eap.graph


def check(name: str, ok: bool, detail: str = "") -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))
    return ok


def ours_to_eap(eg, shape: tuple[int, int, bool], d_model: int, folder: Path) -> bool:
    import torch

    import circuits
    from circuits.render.mib import save_mib, to_mib_dict

    g = circuits.Graph.build(*shape)
    g = circuits.prune.topn(g.with_scores(torch.randn(g.n_edges, generator=torch.Generator().manual_seed(0))),
                            g.n_edges // 20)
    ours = save_mib(g, folder / "ours.json", d_model=d_model, overwrite=True)
    theirs = eg.Graph.from_json(str(ours))
    theirs.to_json(str(folder / "theirs.json"))
    back = circuits.load(folder / "theirs.json")
    a, b = json.loads(ours.read_text()), json.loads((folder / "theirs.json").read_text())
    same_scores = torch.allclose(back.scores, g.scores) and torch.equal(back.in_circuit, g.in_circuit)
    ok = check(f"{shape}: EAP-IG reads our file, we read its file back", same_scores,
               f"{g.n_edges} edges, {g.n_circuit_edges} in the circuit")
    ok &= check(f"{shape}: edge order and values equal EAP-IG's to_json", list(a["edges"]) == list(b["edges"])
                and all(abs(a["edges"][k]["score"] - b["edges"][k]["score"]) < 1e-6
                        and a["edges"][k]["in_graph"] == b["edges"][k]["in_graph"] for k in a["edges"]))
    node_diff = [n for n in a["nodes"] if a["nodes"][n]["in_graph"] != b["nodes"][n]["in_graph"]]
    ok &= check(f"{shape}: nodes and cfg", list(a["nodes"]) == list(b["nodes"]) and a["cfg"] == b["cfg"]
                and to_mib_dict(back)["cfg"] == a["cfg"], f"{len(node_diff)} node in_graph flags differ {node_diff[:5]}")
    return ok


def eap_to_ours(eg, shape: tuple[int, int, bool], d_model: int, folder: Path) -> bool:
    import torch

    import circuits

    cfg = {"n_layers": shape[0], "n_heads": shape[1], "parallel_attn_mlp": shape[2], "d_model": d_model}
    theirs = eg.Graph.from_model(cfg)
    theirs.scores[:] = torch.randn(theirs.scores.shape, generator=torch.Generator().manual_seed(1))
    theirs.apply_topn(len(theirs.edges) // 20, absolute=True)
    theirs.to_json(str(folder / "eap.json"))
    ours = circuits.load(folder / "eap.json")
    names = ours.edge_names()
    want = {n: (float(e.score), bool(e.in_graph)) for n, e in theirs.edges.items()}
    got = dict(zip(names, zip(ours.scores.tolist(), ours.in_circuit.tolist())))
    ok = check(f"{shape}: we read EAP-IG's file edge for edge", set(want) == set(got)
               and all(abs(want[n][0] - got[n][0]) < 1e-6 and want[n][1] == got[n][1] for n in want),
               f"{len(want)} edges, {ours.n_circuit_edges} in the circuit")
    return ok


def mib_rule(eg, d_model: int, folder: Path) -> bool:
    import torch

    import circuits
    from circuits.render.mib import save_mib
    from circuits.render.mib_submission import mib_circuits

    g = circuits.Graph.build(12, 12)
    g = g.with_scores(torch.randn(g.n_edges, generator=torch.Generator().manual_seed(2)))
    path = save_mib(g, folder / "scores.json", d_model=d_model, overwrite=True)
    ok = True
    for pct, ours in mib_circuits(g).items():
        theirs = eg.Graph.from_json(str(path))
        theirs.apply_topn(int(pct / 100 * len(theirs.edges)), absolute=True)
        chosen = [n for n, e in theirs.edges.items() if e.in_graph]
        completed = circuits.prune.remove_dangling(g.with_circuit(chosen)) if chosen else g.with_circuit([])
        bound = pct / 100 * g.n_edges
        ok &= check(f"MIB {pct:g} %: ours = EAP-IG's apply_topn with dangling edges removed, both <= {bound:.1f}",
                    set(completed.circuit_edges()) == set(ours.circuit_edges()) and len(chosen) <= bound
                    and ours.n_circuit_edges <= bound, f"EAP-IG {len(chosen)} edges, ours {ours.n_circuit_edges}")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eap-ig-path", required=True, type=Path, help="checkout of github.com/hannamw/EAP-IG")
    args = ap.parse_args(argv)
    eg = import_eap_graph(args.eap_ig_path)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for shape in ((12, 12, False), (3, 4, True)):
            ok &= ours_to_eap(eg, shape, 768, folder)
            ok &= eap_to_ours(eg, shape, 768, folder)
        ok &= mib_rule(eg, 768, folder)
    print("all checks passed" if ok else "some checks FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
