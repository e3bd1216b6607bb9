"""The CLI answers every mistake: one line `error: ...` naming the flag or file, exit code 2, no traceback,
no output files, found before the model loads (docs/errors.md)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import circuits
from circuits import cli
from circuits.cli import main

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--model", "induction-2l", "--n-examples", "16", "--no-curve", "--quiet"]


def run(*args: str, env: dict | None = None, code: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter (``python -m circuits ...``, or ``python -c code``)."""
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "circuits", *args]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)


def user_error(code: int, err: str, *needles: str) -> str:
    """Assert a one-line user error naming every needle; returns the line."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert sum(ln.startswith("error: ") for ln in lines) == 1, err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def error_of(argv: list[str], capsys, *needles: str) -> str:
    code = main(argv)
    return user_error(code, capsys.readouterr().err, *needles)


def empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def zoo_graph(name: str):
    """The edge graph of a zoo model from its config (zero scores, every edge in the circuit)."""
    from transformers import AutoConfig

    return circuits.graph_for(AutoConfig.from_pretrained(str(circuits.zoo.model_path(name))))


@pytest.fixture(scope="module")
def circuit_file(tmp_path_factory) -> Path:
    """A valid circuit.json for induction-2l (2 layers x 4 heads), found 'on' induction-2l."""
    scores = zoo_graph("induction-2l").with_scores(torch.linspace(-1, 1, 110))
    graph = circuits.prune.topn(scores, 12).with_provenance(model="induction-2l")
    path = tmp_path_factory.mktemp("circuit") / "circuit.json"
    graph.save_json(path)
    return path


# ---------------------------------------------------------------------- import cost, names, help
def test_cli_import_does_not_import_torch():
    r = run(code="import circuits.cli, sys; assert 'torch' not in sys.modules and 'transformers' not in sys.modules, "
                 "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))[:5]")
    assert r.returncode == 0, r.stderr
    r = run(code="import sys, circuits; assert 'torch' not in sys.modules; print(circuits.attribute.__name__)")
    assert r.returncode == 0 and r.stdout.strip() == "attribute", r.stderr


def test_lazy_package_exports_everything():
    for name in circuits.__all__:
        assert getattr(circuits, name) is not None, name
        assert name in dir(circuits)
    assert circuits.prune.topn is not None and circuits.zoo.list_models()
    with pytest.raises(AttributeError):
        circuits.no_such_name  # noqa: B018


def test_cli_names_match_the_engine():
    from circuits import pipeline
    from circuits.metrics import METRICS
    from circuits.render import formats
    from circuits.scores.attribution import IG_METHODS
    from circuits.tasks import TASK_INFO, TASKS

    assert cli.METHODS == pipeline.DISCOVERY_METHODS
    assert set(cli.METRICS) == set(METRICS)
    assert cli.IG_METHODS == IG_METHODS
    assert cli.DISCOVER_OUTPUTS == pipeline.OUTPUTS
    assert cli.MAX_DIAGRAM_EDGES == pipeline.MAX_DIAGRAM_EDGES
    assert cli.MAX_EXPLORER_EDGES == pipeline.MAX_EXPLORER_EDGES
    assert set(cli.DATA_FORMATS + cli.DRAWING_FORMATS) == set(formats.FORMATS)
    assert cli.LOADABLE == formats.LOADABLE
    assert list(TASK_INFO) == list(TASKS)
    from circuits.circuit import minimal

    assert cli.parser.MAX_TARGET == minimal.MAX_TARGET and cli.parser.MIN_TRAIN == minimal.MIN_EXAMPLES


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_shows_defaults_examples_and_names():
    parser = cli.build_parser()
    subs = _subparsers(parser)
    assert set(subs) == {"discover", "evaluate", "render", "patch", "tasks", "models", "export-mib", "compare", "plan"}
    for name, sub in subs.items():
        text = sub.format_help()
        assert "examples:\n  circuits " + name in text, name
        for action in sub._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                shown = sub._get_formatter()._get_help_string(action)
                assert action.help and ("default" in shown or "(required)" in shown), (name, action.option_strings)
    discover = " ".join(subs["discover"].format_help().split())
    for m in cli.METHODS:
        assert m.replace("-", "- ") in discover.replace("-", "- ")  # argparse may wrap at hyphens
    for m in cli.METRICS:
        assert m in discover
    assert "(default: 50" in discover and "(default: 0.01)" in discover


def test_bare_command_prints_help_and_version(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "usage: circuits" in out and "discover" in out and "examples:" in out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"circuits {circuits.__version__}"


def test_listings_are_plain_text(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "ioi" in out and "greater-than" in out and "planted" in out
    for markup in (":func:", ":mod:", "``", ":class:"):
        assert markup not in out
    assert main(["models"]) == 0
    assert "marker_copy" in capsys.readouterr().out


def test_parse_errors_are_one_line(capsys, tmp_path):
    out = tmp_path / "o"
    error_of(["discover", "--model", "induction-2l"], capsys, "--out")
    error_of(["discover", *FAST, "--method", "magic", "--out", str(out)], capsys, "--method", "eap-ig-inputs")
    error_of(["discover", *FAST, "--metric", "bleu", "--out", str(out)], capsys, "--metric", "logit_diff")
    error_of(["nonsense"], capsys, "nonsense")
    assert empty(out)


# ---------------------------------------------------------------------- numbers are checked up front
@pytest.mark.parametrize("flag, value", [
    ("--n-examples", "1"), ("--n-examples", "many"), ("--batch-size", "0"), ("--edges", "-1"),
    ("--test-fraction", "0"), ("--test-fraction", "1"), ("--test-fraction", "nan"), ("--steps", "0"),
    ("--seed", "1.5"), ("--seed", "-3"), ("--tau", "nan"), ("--tau", "-0.1"), ("--threshold", "nan"),
])
def test_bad_numbers_name_the_flag(flag, value, capsys, tmp_path):
    method = ["--method", "acdc"] if flag == "--tau" else []
    error_of(["discover", *FAST, *method, flag, value, "--out", str(tmp_path / "o")], capsys, flag)
    assert empty(tmp_path / "o")


def test_edges_beyond_the_model_and_small_splits(capsys, tmp_path):
    error_of(["discover", *FAST, "--edges", "111", "--out", str(tmp_path / "o")], capsys, "--edges 111", "110")
    error_of(["discover", "--model", "induction-2l", "--n-examples", "2", "--test-fraction", "0.9", "--quiet",
              "--out", str(tmp_path / "o")], capsys, "--test-fraction", "--n-examples")
    assert empty(tmp_path / "o")


# ---------------------------------------------------------------------- options a method ignores are refused
@pytest.mark.parametrize("method, extra, flag", [
    ("eap", ["--tau", "0.1"], "--tau"),
    ("eap-ig-inputs", ["--tau", "0.1"], "--tau"),
    ("acdc", ["--edges", "10"], "--edges"),
    ("acdc", ["--threshold", "0.1"], "--threshold"),
    ("acdc", ["--prune", "greedy"], "--prune"),
    ("acdc", ["--signed"], "--signed"),
    ("acdc", ["--steps", "3"], "--steps"),
    ("eap", ["--steps", "3"], "--steps"),
    ("clean-corrupted", ["--steps", "3"], "--steps"),
    ("exact", ["--steps", "3"], "--steps"),
    ("eap", ["--threshold", "0.1", "--prune", "greedy"], "--prune"),
])
def test_ignored_options_are_refused(method, extra, flag, capsys, tmp_path):
    error_of(["discover", *FAST, "--method", method, *extra, "--out", str(tmp_path / "o")], capsys, flag)
    assert empty(tmp_path / "o")


# ---------------------------------------------------------------------- devices
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "banana"])
def test_unavailable_device(device, capsys, tmp_path):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        pytest.skip("this machine has the device")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has the device")
    line = error_of(["discover", *FAST, "--device", device, "--out", str(tmp_path / "o")], capsys, "--device")
    assert "available here: cpu" in line
    assert empty(tmp_path / "o")


def test_unavailable_device_in_a_subprocess(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    r = run("discover", *FAST, "--device", "cuda", "--out", str(tmp_path / "o"))
    user_error(r.returncode, r.stderr, "--device cuda", "cpu")
    assert empty(tmp_path / "o")


# ---------------------------------------------------------------------- output paths
def test_out_checked_before_work(capsys, tmp_path):
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("x")
    error_of(["discover", *FAST, "--out", str(blocker / "x")], capsys, "--out", "somefile.txt", "not a folder")
    error_of(["discover", *FAST, "--out", str(blocker)], capsys, "--out", "is a file")
    error_of(["patch", *FAST[:2], "--receivers", "logits", "--out", str(blocker / "h.png")], capsys, "--out", "not a folder")
    error_of(["patch", *FAST[:2], "--receivers", "logits", "--out", str(blocker)], capsys, "--out", "'txt'")
    error_of(["patch", *FAST[:2], "--receivers", "logits", "--out", str(tmp_path / "h.png"), "--device", "banana"],
             capsys, "--device")
    existing = tmp_path / "h.png"
    existing.write_bytes(b"old")
    error_of(["patch", *FAST[:2], "--receivers", "logits", "--out", str(existing)], capsys, "--force")
    error_of(["patch", *FAST[:2], "--receivers", "a9.h9", "--out", str(tmp_path / "p.png")], capsys, "--receivers", "a9.h9")
    assert existing.read_bytes() == b"old" and not (tmp_path / "p.png").exists()
    assert blocker.read_text() == "x"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_out_in_read_only_folder(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        error_of(["discover", *FAST, "--out", str(locked / "run")], capsys, "--out", "permission")
    finally:
        locked.chmod(0o700)


def test_existing_results_need_force(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text("{}")
    error_of(["discover", *FAST, "--out", str(out)], capsys, "--force", "report.json")
    assert (out / "report.json").read_text() == "{}" and len(list(out.iterdir())) == 1


# ---------------------------------------------------------------------- model folders
def _gpt2_folder(tmp_path: Path, weights: bool, tokenizer: bool) -> Path:
    from transformers import GPT2Config

    folder = tmp_path / "my-gpt2"
    GPT2Config(n_layer=1, n_head=2, n_embd=8).save_pretrained(folder)
    if weights:
        (folder / "model.safetensors").write_bytes(b"\x00garbage, not safetensors")
    if tokenizer:
        from circuits.tasks import GPT2_TOKENIZER_DIR

        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
            shutil.copy(GPT2_TOKENIZER_DIR / name, folder)
    return folder


def test_model_folder_problems(capsys, tmp_path):
    from transformers import BertConfig, T5Config

    out = tmp_path / "o"
    bare = tmp_path / "empty"
    bare.mkdir()
    error_of(["discover", "--model", str(bare), "--task", "induction", "--out", str(out)], capsys, "--model", "empty")
    folder = _gpt2_folder(tmp_path, weights=False, tokenizer=True)
    error_of(["discover", "--model", str(folder), "--task", "induction", "--out", str(out)], capsys,
             "--model", "no weights", "model.safetensors")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (folder / name).unlink()
    (folder / "model.safetensors").write_bytes(b"x")
    error_of(["discover", "--model", str(folder), "--task", "induction", "--out", str(out)], capsys,
             "--model", "no tokenizer", "tokenizer.json")
    for config in (T5Config(), BertConfig()):
        other = tmp_path / config.model_type
        config.save_pretrained(other)
        line = error_of(["evaluate", "--model", str(other), "--task", "ioi", "--circuit", "c.json"], capsys,
                        f"'{config.model_type}'", "not support", "gpt2", "llama")
        assert len(line) < 400  # not transformers' list of every config class
    weird = tmp_path / "weird"
    weird.mkdir()
    (weird / "config.json").write_text(json.dumps({"model_type": "banana"}))
    assert len(error_of(["discover", "--model", str(weird), "--task", "ioi", "--out", str(out)], capsys, "banana")) < 400
    (weird / "config.json").write_text("{truncated")
    error_of(["discover", "--model", str(weird), "--task", "ioi", "--out", str(out)], capsys, "config.json", "JSON")
    error_of(["discover", "--model", str(tmp_path / "nowhere"), "--task", "ioi", "--out", str(out)], capsys,
             "does not exist")
    error_of(["discover", "--model", "no-such-model", "--out", str(out)], capsys, "stories260k")
    shutil.copy(circuits.tasks.GPT2_TOKENIZER_DIR / "tokenizer.json", folder)
    error_of(["discover", "--model", str(folder), "--out", str(out)], capsys, "--task is required")
    assert empty(out)


def test_corrupt_weights_are_one_line(capsys, tmp_path):
    folder = _gpt2_folder(tmp_path, weights=True, tokenizer=True)
    out = tmp_path / "o"
    error_of(["discover", "--model", str(folder), "--task", "ioi", "--n-examples", "8", "--quiet", "--method",
              "eap", "--out", str(out)], capsys, "--model", "cannot load the weights")
    assert empty(out)


# ---------------------------------------------------------------------- tasks
IOI_ROWS = [
    ("While Alice and Henry were walking to the house, Alice handed a drink to",
     "While Emma and Sandra were walking to the house, Sean handed a drink to", " Henry", " Alice"),
    ("Friends Edward and Kate found a computer at the market. Edward gave it to",
     "Friends Joe and Paul found a computer at the market. Daniel gave it to", " Kate", " Edward"),
]
HEADER = "clean,corrupted,answer,wrong_answer"


def test_task_problems(capsys, tmp_path):
    out = tmp_path / "o"
    base = ["discover", "--model", "ioi-3l", "--quiet", "--out", str(out)]
    error_of([*base, "--task", "iio"], capsys, "--task", "'iio'", "ioi")
    error_of([*base, "--task", "missing.csv"], capsys, "--task missing.csv", "no such file")
    error_of([*base, "--task", "planted"], capsys, "--task planted", "marker_copy")
    extra = tmp_path / "extra.csv"  # the second row's prompts hold unquoted commas
    extra.write_text("\n".join([HEADER, ",".join(IOI_ROWS[1]), ",".join(IOI_ROWS[0])]) + "\n")
    error_of([*base, "--task", str(extra)], capsys, str(extra), "row 2 (line 3)", "6 cells", "header has 4", "quote")
    latin = tmp_path / "latin.csv"
    latin.write_bytes((HEADER + "\nZoë went home. Then,Zoé went home. Then, she, he\n").encode("latin-1"))
    error_of([*base, "--task", str(latin)], capsys, str(latin), "not UTF-8", "save it as UTF-8")
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    error_of([*base, "--task", str(blank)], capsys, str(blank), "empty")
    good = json.dumps(dict(zip(HEADER.split(","), IOI_ROWS[1])))
    truncated = tmp_path / "t.jsonl"
    truncated.write_text(good + "\n" + good[:25])
    error_of([*base, "--task", str(truncated)], capsys, str(truncated), "line 2", "truncated")
    invalid = tmp_path / "i.jsonl"
    invalid.write_text(good + "\n[1, 2]\n")
    error_of([*base, "--task", str(invalid)], capsys, str(invalid), "line 2", "JSON object")
    assert empty(out)


def test_csv_with_bom_runs_and_reports_real_counts(capsys, tmp_path):
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)  # quotes the cells that hold commas; \r\n line ends, as Excel
    writer.writerow(HEADER.split(","))
    writer.writerows(IOI_ROWS * 3)
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes(buffer.getvalue().encode("utf-8-sig"))
    out = tmp_path / "run"
    code = main(["discover", "--model", "ioi-3l", "--task", str(csv_path), "--method", "eap", "--edges", "30",
                 "--no-curve", "--quiet", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "accuracy" in captured.out and "KL to full" in captured.out and "report.json" in captured.out
    report = json.loads((out / "report.json").read_text())
    s = report["settings"]
    assert (s["n_examples"], s["n_train"], s["n_test"]) == (6, 3, 3)
    assert s["task_file"] == str(csv_path) and s["steps"] is None
    assert report["timings"]["total_s"] > 0 and "total" not in report["timings"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    # --n-examples beyond the file is refused, not silently shortened
    error_of(["discover", "--model", "ioi-3l", "--task", str(csv_path), "--n-examples", "50", "--quiet",
              "--out", str(tmp_path / "o2")], capsys, "--n-examples 50", "6 rows")


def test_task_from_ids():
    from circuits.tasks import task_from_ids

    task = task_from_ids([[5, 7, 9], [5, 8, 9]], [[5, 2, 9], [5, 3, 9]], [7, 8], [[2, 4], 3], metric="logit_diff")
    assert len(task) == 2 and task.answers == [[7], [8]] and task.wrong == [[2, 4], [3]]
    assert task.batch().clean.shape == (2, 3)
    for bad, needle in [
        (([[1, 2]], [[1]], [1], [2]), "same length"),
        (([[1]], [[1]], [1, 2], [2]), "answers has 2 entries"),
        (([[1]], [[1]], [1], [1]), "in both"),
        (([[1]], [[-1]], [1], [2]), "non-negative"),
        (([], [], [], []), "no examples"),
    ]:
        with pytest.raises(ValueError, match=needle):
            task_from_ids(*bad)
    with pytest.raises(ValueError, match="vocabulary has 24"):
        task_from_ids([[1, 30]], [[1, 2]], [3], [4], vocab_size=24)


# ---------------------------------------------------------------------- circuit files
def test_render_refuses_invalid_circuit_files(capsys, tmp_path, circuit_file):
    good = json.loads(circuit_file.read_text())
    cases = {
        "list.json": json.dumps([1, 2, 3]),
        "noedges.json": json.dumps({k: v for k, v in good.items() if k != "edges"}),
        "nulledge.json": json.dumps({**good, "edges": [None] + good["edges"][1:]}),
        "truncated.json": circuit_file.read_text()[:200],
        "empty.json": "",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        error_of(["render", str(path), "--out", str(tmp_path / "x.graphml")], capsys, str(path),
                 "is not a valid circuit file (")
    noise = tmp_path / "noise.json"
    noise.write_bytes(bytes(range(256)) * 4)
    error_of(["render", str(noise), "--out", str(tmp_path / "x.csv")], capsys, "is not a valid circuit file")
    bad_xml = tmp_path / "bad.graphml"
    bad_xml.write_text("<graphml><graph>")
    error_of(["render", str(bad_xml), "--out", str(tmp_path / "x.csv")], capsys, "is not a valid circuit file")
    error_of(["render", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.csv")], capsys, "no such file")
    error_of(["render", str(circuit_file), "--out", str(tmp_path / "x.docx")], capsys, "--out", "'docx'")
    error_of(["render", str(circuit_file), "--out", str(tmp_path / "x.csv"), "--merge-qkv"], capsys, "--merge-qkv")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("x.")]


def test_render_converts_between_data_formats(capsys, tmp_path, circuit_file):
    original = circuits.load(circuit_file)
    for suffix in ("json", "graphml", "gexf", "csv"):
        target = tmp_path / f"converted.{suffix}"
        assert main(["render", str(circuit_file), "--out", str(target)]) == 0
        assert f"wrote {target}" in capsys.readouterr().out
        back = circuits.load(target)
        assert back.circuit_edges() == original.circuit_edges()
    error_of(["render", str(circuit_file), "--out", str(tmp_path / "converted.csv")], capsys, "--force")
    assert main(["render", str(circuit_file), "--out", str(tmp_path / "converted.csv"), "--force"]) == 0


def test_render_without_graphviz_is_one_line(tmp_path, circuit_file):
    r = run("render", str(circuit_file), "--out", str(tmp_path / "c.svg"), env={"PATH": "/nonexistent"})
    line = user_error(r.returncode, r.stderr, "Graphviz", "apt-get install graphviz", "--out")
    assert len(line) < 400
    assert not (tmp_path / "c.svg").exists()


def test_render_large_circuit_needs_force_render(capsys, tmp_path):
    path = tmp_path / "big.json"
    zoo_graph("stories260k").save_json(path)  # every edge in the circuit
    error_of(["render", str(path), "--out", str(tmp_path / "big.dot")], capsys, "2461 edges", "--force-render")
    assert not (tmp_path / "big.dot").exists()
    assert main(["render", str(path), "--out", str(tmp_path / "big.dot"), "--force-render"]) == 0
    assert (tmp_path / "big.dot").read_text().startswith(("digraph", "strict digraph", "//"))


# ---------------------------------------------------------------------- evaluate --circuit from another model
def test_evaluate_circuit_from_another_model(capsys, tmp_path, circuit_file):
    # marker_copy has the same shape as induction-2l (2 layers x 4 heads)
    line = error_of(["evaluate", "--model", "marker_copy", "--circuit", str(circuit_file), "--quiet"], capsys,
                    "'induction-2l'", "'marker_copy'", "--force")
    assert "same shape" in line
    big = tmp_path / "stories.json"
    circuits.prune.topn(zoo_graph("stories260k"), 10).with_provenance(model="stories260k").save_json(big)
    error_of(["evaluate", "--model", "induction-2l", "--circuit", str(big), "--force", "--quiet"], capsys,
             "5 layers x 8 heads", "2 layers x 4 heads", "stories260k", "induction-2l")
    report = tmp_path / "r.json"
    code = main(["evaluate", "--model", "marker_copy", "--circuit", str(circuit_file), "--force", "--n-examples", "16",
                 "--quiet", "--out", str(report)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "KL to full" in captured.out and "accuracy" in captured.out
    assert json.loads(report.read_text())["settings"]["n_test"] == 8


# ---------------------------------------------------------------------- interrupts, big circuits, bugs
def test_ctrl_c_during_imports(tmp_path):
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys
        class Interrupt:  # Ctrl-C while torch is being imported
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Interrupt())
        from circuits.cli import main
        sys.exit(main(["discover", "--model", "induction-2l", "--out", {str(out)!r}]))
    """)
    r = run(code=code)
    assert r.returncode == 130, r.stderr
    assert "interrupted" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_big_circuit_skips_the_diagram_only(tmp_path):
    out = tmp_path / "run"
    r = run("discover", "--model", "stories260k", "--method", "eap", "--threshold", "-1", "--n-examples", "4",
            "--no-curve", "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Loading weights" not in r.stderr  # --quiet silences transformers too
    warnings_ = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert any("--force-render" in ln and "2461" in ln for ln in warnings_), r.stderr
    assert all(ln.startswith("warning: ") for ln in warnings_), r.stderr
    assert {"scores.pt", "circuit.json", "report.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "circuit.svg").exists()
    assert any("explorer skipped" in ln and "2461" in ln for ln in warnings_), r.stderr  # above 2,000 edges
    assert not (out / "circuit.html").exists()
    assert "2461 of 2461" in r.stdout and "report.json" in r.stdout


def test_bugs_still_raise(monkeypatch):
    def broken(args):
        raise RuntimeError("a genuine bug")

    monkeypatch.setattr(cli, "cmd_models", broken)
    with pytest.raises(RuntimeError, match="genuine bug"):
        main(["models"])


# ---------------------------------------------------------------------- faithfulness targets
@pytest.mark.parametrize("argv, needles", [
    (["--faithfulness", "2"], ["--faithfulness", "1.5"]),
    (["--faithfulness", "0"], ["--faithfulness"]),
    (["--faithfulness", "nan"], ["--faithfulness"]),
    (["--refine"], ["--refine", "--faithfulness"]),
    (["--faithfulness", "0.9", "--edges", "10"], ["--faithfulness", "--edges"]),
    (["--faithfulness", "0.9", "--method", "acdc"], ["--faithfulness", "acdc"]),
    (["--faithfulness", "0.9", "--prune", "greedy"], ["--prune"]),
    (["--metric", "accuracy", "--method", "eap"], ["--metric accuracy", "--method exact"]),
    (["--metric", "top1", "--method", "edge-pruning"], ["--metric top1", "logit_diff"]),
])
def test_faithfulness_target_mistakes(argv, needles, tmp_path, capsys):
    out = tmp_path / "out"
    error_of(["discover", "--model", "marker_copy", "--out", str(out), *argv], capsys, *needles)
    assert empty(out)


def test_too_few_training_examples_for_a_target(tmp_path, capsys):
    out = tmp_path / "out"
    error_of(["discover", "--model", "marker_copy", "--n-examples", "10", "--faithfulness", "0.9", "--out", str(out),
              "--quiet"], capsys, "--faithfulness", "8 training examples")
    assert empty(out)


def test_faithfulness_target_and_refinement_end_to_end(tmp_path, capsys):
    """The planted model's known circuit is what search + refinement return at f >= 0.95."""
    from circuits.zoo.planted import ground_truth

    out = tmp_path / "out"
    code = main(["discover", "--model", "marker_copy", "--n-examples", "64", "--faithfulness", "0.95", "--refine",
                 "--no-curve", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    search = report["search"]
    assert search["target_met"] and search["refined"] and search["is_1_minimal"]
    assert all(f < 0.95 for f in search["removal_faithfulness"].values())
    assert len(report["faithfulness_ci"]) == 2 and report["n_examples"] == 32
    assert set(report["edges"]) == set(ground_truth("marker_copy").circuit_edges())
    assert "target" in capsys.readouterr().out


def test_unreachable_target_writes_the_best_circuit_and_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["discover", "--model", "marker_copy", "--n-examples", "32", "--faithfulness", "1.5", "--no-curve",
                 "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "target not met" in err and "Traceback" not in err
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["target_met"] is False and (out / "circuit.json").exists()



def test_hub_name_not_cached_offline_is_one_line(tmp_path, capsys, monkeypatch):
    """A hub id that is not in the local cache, with HF_HUB_OFFLINE=1: exit 2, one `error:` line saying so
    and how to get it, no traceback, no outputs. (In-process: the offline switch is read when the name is
    resolved, so setting it here is what setting it before the run does; the cache is an empty folder.)"""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    error_of(["discover", "--model", "nobody/not-cached-model", "--task", "ioi", "--out", str(out)], capsys,
                    "--model", "not in the local cache", "HF_HUB_OFFLINE",
                    "huggingface-cli download nobody/not-cached-model", "HF_HOME")
    assert empty(out)
