"""The CLI's option names, argument types and argument parser (building it imports neither torch nor transformers)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .errors import UsageError

# Names, as plain strings so that building the parser does not import torch; tests/test_cli_errors.py
# checks them against circuits.pipeline.DISCOVERY_METHODS, circuits.metrics.METRICS, etc.
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
METHODS: tuple[str, ...] = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "eap-ig-edges", "exact",
                             "edge-pruning", "acdc")
IG_METHODS: tuple[str, ...] = ("eap-ig-inputs", "eap-ig-activations", "eap-ig-edges")
METRICS: tuple[str, ...] = ("logit_diff", "prob_diff", "kl_div", "answer_logprob", "nll", "accuracy", "top1")
ABLATIONS: tuple[str, ...] = ("patching", "mean", "zero")
DISCOVER_OUTPUTS: tuple[str, ...] = ("scores.pt", "circuit.json", "circuit.svg", "circuit.png", "curve.png", "curve.svg",
                                     "report.json")
DATA_FORMATS: tuple[str, ...] = ("json", "graphml", "gexf", "csv")
DRAWING_FORMATS: tuple[str, ...] = ("dot", "svg", "png", "pdf", "html")
LOADABLE: tuple[str, ...] = ("json", "graphml", "gexf", "csv")
SUFFIX_ALIASES: dict[str, str] = {"gv": "dot", "xml": "graphml", "htm": "html"}
PLOT_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")
MIB_TASKS: tuple[str, ...] = ("ioi", "mcqa", "arithmetic-addition", "arithmetic-subtraction", "arc-easy", "arc-challenge")
MIB_MODELS: tuple[str, ...] = ("gpt2", "qwen2.5", "gemma2", "llama3", "interpbench")
"""= circuits.render.mib_submission.MIB_TASKS / MIB_MODELS (which import torch); a test checks they agree."""
COMPARE_OUTPUTS: tuple[str, ...] = ("compare.json", "compare.svg")
MAX_DIAGRAM_EDGES = 500  # = circuits.pipeline.MAX_DIAGRAM_EDGES (which imports torch); the test checks they agree
INSTALL_GRAPHVIZ = "apt-get install graphviz, brew install graphviz or conda install -c conda-forge graphviz"
DEFAULTS = {"n_examples": 200, "edges": 50, "prune": "topn", "steps": 5, "tau": 0.01, "pruning_steps": 200}
MAX_TARGET = 1.5  # = circuits.circuit.minimal.MAX_TARGET (checked by a test)
MIN_TRAIN = 8  # = circuits.circuit.minimal.MIN_EXAMPLES (checked by a test)
"""Defaults of options whose parser default is None (so that giving them explicitly can be told apart)."""


# ---------------------------------------------------------------------- argument types
def _int_type(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi}, got {value}")
        return value

    return parse


def _float_type(lo: float | None = None, lo_open: bool = False, hi_open: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise argparse.ArgumentTypeError(f"must be {'above' if lo_open else 'at least'} {lo:g}, got {value:g}")
        if hi_open is not None and value >= hi_open:
            raise argparse.ArgumentTypeError(f"must be below {hi_open:g}, got {value:g}")
        return value

    return parse


# ---------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line ``error: ...`` (raised, so that :func:`main` can return 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs keep their line breaks; every option shows its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default is argparse.SUPPRESS
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None:
            return text
        return f"{text} (default: %(default)s)"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME|FOLDER",
                   help="zoo model name (see `circuits models`), a local transformers folder, or a Hugging Face "
                        "name such as Qwen/Qwen2.5-0.5B (from the local cache; downloaded first when the hub is "
                        "reachable and HF_HUB_OFFLINE is not set)")
    p.add_argument("--task", default=None, metavar="NAME|FILE",
                   help="built-in task (see `circuits tasks`) or a .csv/.jsonl file (default: the zoo model's task)")
    p.add_argument("--metric", default=None, choices=METRICS, metavar="NAME",
                   help=f"metric: {', '.join(METRICS)} (default: the task's metric)")
    p.add_argument("--n-examples", type=_int_type(2), default=None, metavar="N",
                   help=f"examples to generate for a built-in task, or the first N rows of a task file "
                        f"(default: {DEFAULTS['n_examples']} for a built-in task, every row of a file)")
    p.add_argument("--batch-size", type=_int_type(1), default=32, metavar="N", help="examples per forward pass")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="model precision")
    p.add_argument("--seed", type=_int_type(0, 2**63 - 1), default=0, metavar="N",
                   help="seed for data generation and the train/test split")
    p.add_argument("--test-fraction", type=_float_type(0.0, lo_open=True, hi_open=1.0), default=0.5, metavar="F",
                   help="held-out share of the examples, used for evaluation (between 0 and 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")


def build_parser() -> argparse.ArgumentParser:
    """The ``circuits`` parser; ``args.command`` names the subcommand (None for a bare ``circuits``)."""
    from .. import __version__

    p = _Parser(
        prog="circuits",
        formatter_class=_Formatter,
        description="Discover, evaluate and draw edge-level circuits in transformers language models.",
        epilog=_examples(
            "circuits models                                   # the shipped models",
            "circuits discover --model induction-2l --out runs/induction",
            "circuits discover --help                          # options of one command",
        ) + "\n\nRun without a command, circuits prints this help and exits with code 2.",
    )
    p.add_argument("--version", action="version", version=f"circuits {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                              formatter_class=_Formatter, epilog=epilog)

    _add_discover(command)
    _add_evaluate(command)
    _add_render(command)
    _add_patch(command)
    _add_export_mib(command)
    _add_compare(command)
    command("tasks", "list the built-in tasks", _examples("circuits tasks"))
    command("models", "list the zoo models", _examples("circuits models"))
    return p


_Command = Callable[[str, str, str], argparse.ArgumentParser]
"""Adds a subcommand parser: (name, help, epilog) -> parser."""


def _add_discover(command: _Command) -> None:
    d = command("discover", "score edges, prune to a circuit, evaluate it, draw it", _examples(
        "circuits discover --model induction-2l --out runs/induction",
        "circuits discover --model stories260k --task pronoun --method eap --edges 100 --out runs/pronoun",
        "circuits discover --model ./my-gpt2 --task my_task.csv --method acdc --tau 0.02 --out runs/acdc",
        "circuits discover --model stories260k --task pronoun --faithfulness 0.9 --refine --out runs/minimal",
    ))
    _add_common(d)
    d.add_argument("--method", default="eap-ig-inputs", choices=METHODS, metavar="NAME",
                   help=f"scoring method: {', '.join(METHODS)}")
    size = d.add_mutually_exclusive_group()
    size.add_argument("--edges", type=_int_type(0), default=None, metavar="N",
                      help=f"keep the top N edges, then drop dangling ones (default: {DEFAULTS['edges']}; not with acdc)")
    size.add_argument("--threshold", type=_float_type(), default=None, metavar="T",
                      help="keep the edges with |score| >= T instead of a fixed number (default: unused; not with acdc)")
    size.add_argument("--faithfulness", type=_float_type(0.0, lo_open=True), default=None, metavar="F",
                      help=f"the smallest top-k circuit whose normalized faithfulness on the training split reaches F "
                           f"(0 < F <= {MAX_TARGET}; default: unused; not with acdc)")
    d.add_argument("--refine", action="store_true",
                   help="with --faithfulness: make the circuit 1-minimal by exact patching (slower)")
    d.add_argument("--prune", choices=("topn", "greedy"), default=None,
                   help="how --edges picks the edges (default: topn; not with --threshold or acdc)")
    d.add_argument("--signed", action="store_true", help="rank by signed scores instead of |score| (not with acdc)")
    d.add_argument("--steps", type=_int_type(1), default=None, metavar="N",
                   help=f"integration steps of the IG methods {', '.join(IG_METHODS)} (default: {DEFAULTS['steps']}), "
                        f"or optimisation steps of edge-pruning (default: {DEFAULTS['pruning_steps']})")
    d.add_argument("--tau", type=_float_type(0.0), default=None, metavar="T",
                   help=f"ACDC's threshold, only with --method acdc (default: {DEFAULTS['tau']})")
    d.add_argument("--parallel", choices=("data", "masks"), default="data",
                   help="under torchrun with several processes: split the examples (data) or, for exact effects, "
                        "--faithfulness/--refine, evaluation and the curve, the masks (masks; when the data is "
                        "small and the edges many); see docs/scaling.md")
    d.add_argument("--no-curve", action="store_true", help="skip the faithfulness curve")
    d.add_argument("--out", required=True, metavar="FOLDER", help="output folder (written all or nothing)")
    d.add_argument("--force", action="store_true", help="overwrite results already in --out")
    d.add_argument("--force-render", action="store_true",
                   help=f"draw circuits of more than {MAX_DIAGRAM_EDGES} edges too")


def _add_evaluate(command: _Command) -> None:
    e = command("evaluate", "faithfulness of a saved circuit on held-out data", _examples(
        "circuits evaluate --model induction-2l --circuit runs/induction/circuit.json",
        "circuits evaluate --model induction-2l --circuit c.json --ablation mean --out report.json",
        "circuits evaluate --model ./my-gpt2 --task my_task.jsonl --circuit c.graphml --force",
    ))
    _add_common(e)
    e.add_argument("--circuit", required=True, metavar="FILE",
                   help="circuit file (circuit.json, .graphml, .gexf, .csv)")
    e.add_argument("--ablation", choices=ABLATIONS, default="patching",
                   help="what replaces the edges outside the circuit")
    e.add_argument("--out", default=None, metavar="FILE", help="write the report JSON here (default: print only)")
    e.add_argument("--force", action="store_true",
                   help="overwrite --out, and evaluate a circuit found on a model of another name")


def _add_render(command: _Command) -> None:
    r = command("render", "redraw a saved circuit, or convert it to another format", _examples(
        "circuits render runs/induction/circuit.json --out circuit.svg --merge-qkv",
        "circuits render circuit.json --out circuit.graphml      # for Gephi/Cytoscape; no Graphviz needed",
        "circuits render circuit.json --out heads.pdf --collapse-heads --groups groups.json",
    ))
    r.add_argument("circuit", metavar="FILE", help="circuit file (circuit.json, .graphml, .gexf, .csv)")
    r.add_argument("--out", required=True, metavar="FILE",
                   help="output file: .svg .png .pdf .html .dot (drawings) or .json .graphml .gexf .csv (data)")
    r.add_argument("--format", default=None, choices=DATA_FORMATS + DRAWING_FORMATS,
                   help="format to write (default: from --out's suffix)")
    r.add_argument("--merge-qkv", action="store_true", help="one edge per head instead of q/k/v edges (drawings only)")
    r.add_argument("--collapse-heads", action="store_true", help="one node per attention layer (drawings only)")
    r.add_argument("--groups", default=None, metavar="FILE",
                   help='JSON file {"name movers": ["a9.h9", ...], ...} drawn as clusters (drawings only; default: none)')
    r.add_argument("--force", action="store_true", help="overwrite --out")
    r.add_argument("--force-render", action="store_true",
                   help=f"draw circuits of more than {MAX_DIAGRAM_EDGES} edges too")


def _add_patch(command: _Command) -> None:
    pp = command("patch", "path patching heatmap: every head -> chosen receivers", _examples(
        "circuits patch --model induction-2l --receivers 'a1.h0<k>' --out heatmap.png",
        "circuits patch --model ioi-3l --receivers logits --normalize --out ioi_logits.svg",
    ))
    _add_common(pp)
    pp.add_argument("--receivers", nargs="+", required=True, metavar="NODE",
                    help="receivers, e.g. 'a9.h9<q>' a10.h0 m3 logits")
    pp.add_argument("--normalize", action="store_true", help="divide by m(clean) - m(corrupted)")
    pp.add_argument("--out", default="path_patching.png", metavar="FILE", help="heatmap file (.png .svg .pdf)")
    pp.add_argument("--force", action="store_true", help="overwrite --out")


def _add_export_mib(command: _Command) -> None:
    x = command("export-mib", "write a MIB circuit-track submission folder from edge scores", _examples(
        "circuits export-mib runs/ioi/circuit.json --task ioi --model gpt2 --out submission",
        "circuits export-mib scores.json --task mcqa --model qwen2.5 --out submission --circuits",
    ))
    x.add_argument("scores", metavar="FILE",
                   help="scores of every edge: circuit.json (from discover), .graphml, .gexf, .csv or an EAP-IG JSON")
    x.add_argument("--task", required=True, metavar="NAME", help=f"MIB task: {', '.join(MIB_TASKS)}")
    x.add_argument("--model", required=True, metavar="NAME", help=f"MIB model: {', '.join(MIB_MODELS)}")
    x.add_argument("--out", required=True, metavar="FOLDER",
                   help="submission folder; OUT/{task}_{model}/ is written, all or nothing")
    x.add_argument("--circuits", action="store_true",
                   help="write the nine binary circuits (<= 0.1 ... 50 %% of edges) instead of the importance scores")
    x.add_argument("--force", action="store_true", help="replace the MIB files already in OUT/{task}_{model}/")


def _add_compare(command: _Command) -> None:
    c = command("compare", "compare circuits: overlap, rank correlation, faithfulness of intersection and union",
                _examples(
                    "circuits compare runs/eap/circuit.json runs/exact/circuit.json",
                    "circuits compare truth.json a.json b.json --reference truth.json --out cmp",
                    "circuits compare a.json b.json --model induction-2l --task induction --out cmp",
                ))
    c.add_argument("circuits", nargs="+", metavar="FILE", help="two or more circuit files of one model")
    c.add_argument("--reference", default=None, metavar="FILE",
                   help="one of the files, e.g. a ground truth: precision and recall of the others against it (default: none)")
    c.add_argument("--model", default=None, metavar="NAME|FOLDER",
                   help="measure the faithfulness of the intersection and the union on this model (default: none, no faithfulness)")
    c.add_argument("--task", default=None, metavar="NAME|FILE", help="task for the faithfulness (default: the zoo model's task)")
    c.add_argument("--n-examples", type=_int_type(2), default=None, metavar="N",
                   help=f"examples for the faithfulness (default: {DEFAULTS['n_examples']} for a built-in task)")
    c.add_argument("--batch-size", type=_int_type(1), default=32, metavar="N", help="examples per forward pass")
    c.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    c.add_argument("--dtype", default="float32", choices=DTYPES, help="model precision")
    c.add_argument("--seed", type=_int_type(0, 2**63 - 1), default=0, metavar="N", help="seed for data generation")
    c.add_argument("--out", default=None, metavar="FOLDER",
                   help="write compare.json and the diagram compare.svg here (all or nothing; default: print only)")
    c.add_argument("--force", action="store_true", help="overwrite compare.json / compare.svg in --out")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
