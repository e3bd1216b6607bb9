"""Task generators, Task/Batch containers, and CSV/JSONL loading (with the shipped GPT-2 tokenizer)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from circuits.tasks import (
    GPT2_TOKENIZER_DIR,
    TASK_MODULES,
    TASKS,
    Task,
    gpt2_tokenizer,
    load_csv,
    load_jsonl,
    load_task,
    make_docstring,
    make_gender,
    make_greater_than,
    make_induction,
    make_ioi,
    make_sva,
)
from circuits.tasks import docstring as docstring_mod
from circuits.tasks import gender as gender_mod
from circuits.tasks import ioi as ioi_mod
from circuits.tasks.build import build_task, encode, resolve_bos


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


def diff_positions(task: Task, i: int) -> list[int]:
    return [p for p, (a, b) in enumerate(zip(task.clean_ids[i], task.corrupted_ids[i])) if a != b]


def single_id(tok, word: str) -> int:
    (token,) = encode(tok, " " + word)
    return token


def word_level_tokenizer(extra=(), split_digits=False):
    """A small whitespace word-level tokenizer with BOS != EOS (like the project's own trained models)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from circuits.tasks import all_words

    vocab_words = ["<unk>", "<s>", "</s>"] + sorted(all_words() | set(extra))
    vocab = {w: i for i, w in enumerate(vocab_words)}
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    pre = [pre_tokenizers.WhitespaceSplit()]
    if split_digits:
        pre.append(pre_tokenizers.Digits(individual_digits=True))
    model.pre_tokenizer = pre_tokenizers.Sequence(pre)
    return PreTrainedTokenizerFast(tokenizer_object=model, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


# ------------------------------------------------------------------------------------------------------------
# Shipped tokenizer
# ------------------------------------------------------------------------------------------------------------


def test_shipped_gpt2_tokenizer(tok):
    assert (GPT2_TOKENIZER_DIR / "SOURCE.txt").is_file()
    assert "MIT License" in (GPT2_TOKENIZER_DIR / "LICENSE.txt").read_text(encoding="utf-8")
    assert encode(tok, "hello <|endoftext|>") == [31373, 220, 50256]
    assert resolve_bos(tok) is None  # GPT-2: BOS == EOS, so no BOS by default
    assert resolve_bos(tok, prepend_bos=True) == 50256
    with pytest.raises(ValueError, match="does not exist"):
        gpt2_tokenizer("/nonexistent/folder")


# ------------------------------------------------------------------------------------------------------------
# Every generator: determinism, format, alignment
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TASKS))
def test_generator_deterministic_and_valid(tok, name):
    a, b, c = TASKS[name](tok, n=40, seed=0), TASKS[name](tok, n=40, seed=0), TASKS[name](tok, n=40, seed=1)
    assert len(a) == 40 and a.meta["dropped"] == {}
    assert (a.clean, a.corrupted, a.clean_ids, a.corrupted_ids, a.answers, a.wrong) == \
        (b.clean, b.corrupted, b.clean_ids, b.corrupted_ids, b.answers, b.wrong)
    assert a.clean_ids != c.clean_ids
    from circuits.metrics import METRICS

    assert a.metric in METRICS
    for i in range(len(a)):
        assert len(a.clean_ids[i]) == len(a.corrupted_ids[i])
        assert a.clean_ids[i] != a.corrupted_ids[i]
        assert a.answers[i] and a.wrong[i] and not set(a.answers[i]) & set(a.wrong[i])
        if a.clean:  # string tasks: the ids are the tokenization of the strings (GPT-2: no BOS)
            assert a.clean_ids[i] == encode(tok, a.clean[i])
            assert a.corrupted_ids[i] == encode(tok, a.corrupted[i])


@pytest.mark.parametrize("name", list(TASKS))
def test_string_examples_deterministic_and_words(name):
    module = TASK_MODULES[name]
    first, again, other = module.generate_examples(60, 0), module.generate_examples(60, 0), module.generate_examples(60, 1)
    assert first == again and first != other
    vocab = module.words()
    for ex in first:
        assert {"clean", "corrupted", "answers", "wrong"} <= set(ex)
        texts = [ex["clean"], ex["corrupted"], *ex["answers"], *ex["wrong"]]
        assert {w for t in texts for w in t.split()} <= vocab


def test_ioi_format(tok):
    task = make_ioi(tok, n=60, seed=3)
    examples = ioi_mod.generate_examples(60, seed=3)
    assert [e["clean"] for e in examples] == task.clean  # all shipped names are single GPT-2 tokens
    assert len(ioi_mod.names()) >= 50 and len(ioi_mod.TEMPLATES) >= 8
    assert {e["order"] for e in examples} == {"ABBA", "BABA"}
    for i, ex in enumerate(examples):
        io, s = single_id(tok, ex["io"]), single_id(tok, ex["s"])
        assert task.answers[i] == [io] and task.wrong[i] == [s]
        pos = diff_positions(task, i)
        assert len(pos) == 3  # exactly the three name positions
        clean_names = [task.clean_ids[i][p] for p in pos]
        assert sorted(clean_names) == sorted([io, s, s])
        expected_first = io if ex["order"] == "ABBA" else s
        assert clean_names[0] == expected_first and clean_names[2] == s
        corrupt_names = [task.corrupted_ids[i][p] for p in pos]
        assert len(set(corrupt_names)) == 3 and not set(corrupt_names) & {io, s}
    assert all(e["order"] == "BABA" for e in ioi_mod.generate_examples(20, 0, order="BABA"))


def test_greater_than_format(tok):
    task = make_greater_than(tok, n=60, seed=0)
    table = task.meta["year_tokens"]
    assert [tok.decode([t]) for t in table] == [f"{v:02d}" for v in range(100)]
    for i, text in enumerate(task.clean):
        year = int(text.split()[6])
        xx, yy = divmod(year, 100)
        assert 11 <= xx <= 17 and 2 <= yy <= 98
        assert text.endswith(f"to the year {xx}") and task.corrupted[i] == text.replace(f"{year}", f"{xx}01")
        pos = diff_positions(task, i)
        assert len(pos) == 1  # only the YY token differs
        assert task.clean_ids[i][pos[0]] == table[yy] and task.corrupted_ids[i][pos[0]] == table[1]
        assert task.answers[i] == table[yy + 1:] and task.wrong[i] == table[: yy + 1]
        assert len(task.answers[i]) + len(task.wrong[i]) == 100
        # the YY token is the single-token continuation of the prompt
        assert encode(tok, text + f"{yy:02d}") == task.clean_ids[i] + [table[yy]]


def test_greater_than_rejects_digit_splitting_tokenizer():
    with pytest.raises(ValueError, match="does not split years into two-digit tokens"):
        make_greater_than(word_level_tokenizer(split_digits=True), n=5)


def test_induction_format(tok):
    task = make_induction(tok, n=30, seed=0, seq_len=6)
    assert task.clean == [] and task.corrupted == [] and task.metric == "answer_logprob"
    for i in range(len(task)):
        clean, corrupt = task.clean_ids[i], task.corrupted_ids[i]
        seq = clean[:6]
        assert len(set(seq)) == 6 and clean == seq + seq[:-1]
        assert task.answers[i] == [seq[-1]]
        assert task.wrong[i][0] in seq[:-1]
        assert corrupt[:6] == seq and not set(corrupt[6:]) & set(seq) and len(set(corrupt[6:])) == 5
        assert diff_positions(task, i) == list(range(6, 11))
    own = make_induction(tok, n=5, seed=0, seq_len=3, vocab_ids=range(1000, 1010))
    assert all(1000 <= t < 1010 for ids in own.clean_ids + own.corrupted_ids for t in ids)
    with pytest.raises(ValueError, match="pool of at least"):
        make_induction(tok, n=5, seq_len=6, vocab_ids=range(5))


@pytest.mark.parametrize("corruption", docstring_mod.CORRUPTIONS)
def test_docstring_format(tok, corruption):
    task = make_docstring(tok, n=20, seed=0, corruption=corruption)
    names = {single_id(tok, w) for w in docstring_mod.identifiers()}
    for i, text in enumerate(task.clean):
        def_args = text.split("(self, ")[1].split("):")[0].split(", ")
        documented = [line.split()[1].rstrip(":") for line in text.splitlines() if line.strip().startswith(":param ")]
        assert text.endswith("    :param") and documented == def_args[2:4]
        assert task.answers[i] == [single_id(tok, def_args[4])]
        assert sorted(task.wrong[i]) == sorted(single_id(tok, a) for a in def_args if a != def_args[4])
        pos = diff_positions(task, i)
        expected = {"random_random": 5, "random_def": 2, "random_doc": 2}[corruption]
        assert len(pos) == expected  # only parameter-name tokens change
        assert all(task.clean_ids[i][p] in names and task.corrupted_ids[i][p] in names for p in pos)
    with pytest.raises(ValueError, match="corruption must be one of"):
        make_docstring(tok, n=2, corruption="shuffle")


def test_sva_format(tok):
    task = make_sva(tok, n=40, seed=0)
    sing = [single_id(tok, v) for v in ("is", "was", "has")]
    plur = [single_id(tok, v) for v in ("are", "were", "have")]
    for i, text in enumerate(task.clean):
        assert text.startswith("The ")
        assert diff_positions(task, i) == [1]  # only the subject noun
        plural = task.answers[i] == plur
        assert task.answers[i] == (plur if plural else sing) and task.wrong[i] == (sing if plural else plur)


def test_gender_format(tok):
    task = make_gender(tok, n=40, seed=0)
    male = set(gender_mod.male_names())
    for i, text in enumerate(task.clean):
        (pos,) = diff_positions(task, i)  # only the name
        name = tok.decode([task.clean_ids[i][pos]]).strip()
        other = tok.decode([task.corrupted_ids[i][pos]]).strip()
        assert (name in male) != (other in male)  # the corrupted name has the other gender
        assert task.answers[i] == [single_id(tok, "he" if name in male else "she")]
        assert task.wrong[i] == [single_id(tok, "she" if name in male else "he")]


def test_word_level_tokenizer_gets_bos():
    wl = word_level_tokenizer()
    task = make_ioi(wl, n=5, seed=0)
    assert all(ids[0] == wl.bos_token_id for ids in task.clean_ids + task.corrupted_ids)
    assert task.meta["prepend_bos"] is True
    no_bos = make_ioi(wl, n=5, seed=0, prepend_bos=False)
    assert [ids[1:] for ids in task.clean_ids] == no_bos.clean_ids


# ------------------------------------------------------------------------------------------------------------
# Dropping and validation
# ------------------------------------------------------------------------------------------------------------


def _stream(examples):
    while True:
        yield from examples


def test_build_task_drops_with_warning(tok):
    good = {"clean": "When Mary and John went out, John thanked", "corrupted": "When Anna and Paul went out, Mark thanked",
            "answers": [" Mary"], "wrong": [" John"]}
    multi = dict(good, answers=[" Xyzzyplugh"])
    unequal = dict(good, corrupted="When Anna and Paul went outside today, Mark thanked")
    with pytest.warns(UserWarning, match=r"dropped 2 of 4 .*answer is not a single token.*different lengths"):
        task = build_task("t", _stream([good, multi, unequal]), 2, tok, "logit_diff")
    assert len(task) == 2
    assert task.meta["dropped"] == {"answer is not a single token after the prompt": 1,
                                    "clean and corrupted prompts tokenize to different lengths": 1}
    with pytest.raises(ValueError, match=r"all \d+ generated examples were dropped for tokenizer GPT2Tokenizer"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_task("t", _stream([multi]), 3, tok, "logit_diff")


def test_task_validation_errors():
    ok = dict(name="x", clean=["a b", "c d"], corrupted=["a e", "c d e"], clean_ids=[[1, 2], [3, 4]],
              corrupted_ids=[[1, 5], [3, 4, 5]], answers=[[7], [7]], wrong=[[8], [8]], metric="logit_diff")
    with pytest.raises(ValueError, match=r"example 1: clean and corrupted .* \(2 vs 3\); clean 'c d' -> 2 tokens \[3, 4\]; "
                                         r"corrupted 'c d e' -> 3 tokens \[3, 4, 5\]"):
        Task(**ok)
    with pytest.raises(ValueError, match="dataset is empty"):
        Task(**dict(ok, clean=[], corrupted=[], clean_ids=[], corrupted_ids=[], answers=[], wrong=[]))
    with pytest.raises(ValueError, match="unknown metric"):
        Task(**dict(ok, corrupted_ids=[[1, 5], [3, 5]], metric="logitdiff"))


# ------------------------------------------------------------------------------------------------------------
# Batches, split, subset
# ------------------------------------------------------------------------------------------------------------


def test_batch_left_padding():
    task = Task(name="x", clean=[], corrupted=[], clean_ids=[[5, 6, 7], [8]], corrupted_ids=[[5, 9, 7], [4]],
                answers=[[1, 2], [3]], wrong=[[4], [5, 6, 7]], metric="logit_diff", pad_id=0)
    (batch,) = list(task.batches(8))
    assert len(batch) == 2
    assert batch.clean.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch.corrupted.tolist() == [[5, 9, 7], [0, 0, 4]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch.answer_pos.tolist() == [2, 2]
    assert batch.answers.tolist() == [[1, 2], [3, -1]]
    assert batch.wrong.tolist() == [[4, -1, -1], [5, 6, 7]]
    assert all(t.dtype == torch.long for t in (batch.clean, batch.attention_mask, batch.answers, batch.answer_pos))
    moved = batch.to("cpu")
    assert torch.equal(moved.clean, batch.clean)


def test_batches_order_and_sizes(tok):
    task = make_ioi(tok, n=10, seed=0)
    batches = list(task.batches(4))
    assert [len(b) for b in batches] == [4, 4, 2]
    for b in batches:
        assert (b.answer_pos == b.clean.shape[1] - 1).all()
        assert b.attention_mask[:, -1].all()  # left padding: last position always real
    rows = torch.cat([b.answers[:, 0] for b in batches]).tolist()
    assert rows == [a[0] for a in task.answers]


def test_split_and_subset(tok):
    task = make_gender(tok, n=20, seed=0)
    train, test = task.split(0.25, seed=0)
    assert (len(train), len(test)) == (15, 5)
    assert sorted(train.clean + test.clean) == sorted(task.clean)
    again = task.split(0.25, seed=0)
    assert again[1].clean == test.clean and task.split(0.25, seed=1)[1].clean != test.clean
    assert task.subset(3).clean == task.clean[:3]
    with pytest.raises(ValueError):
        task.subset(21)
    with pytest.raises(ValueError):
        task.split(1.0)


# ------------------------------------------------------------------------------------------------------------
# CSV / JSONL
# ------------------------------------------------------------------------------------------------------------

HEADER = "clean,corrupted,answer,wrong_answer\n"
ROW = "When Mary and John went out John thanked,When Anna and Paul went out Mark thanked, Mary, John\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_ok(tok, tmp_path):
    task = load_csv(write(tmp_path, "t.csv", HEADER + ROW + ROW), tok)
    assert len(task) == 2 and task.metric == "logit_diff" and task.name == "t"
    assert task.answers[0] == [single_id(tok, "Mary")] and task.wrong[0] == [single_id(tok, "John")]
    with_metric = write(tmp_path, "m.csv", HEADER.strip() + ",metric\n" + ROW.strip() + ",prob_diff\n")
    assert load_csv(with_metric, tok).metric == "prob_diff"
    assert load_csv(with_metric, tok, metric="accuracy").metric == "accuracy"


def test_csv_errors(tok, tmp_path):
    with pytest.raises(ValueError, match=r"missing column\(s\) 'wrong_answer' in the header; required columns are "
                                         r"clean, corrupted, answer, wrong_answer"):
        load_csv(write(tmp_path, "a.csv", "clean,corrupted,answer\nx,y, z\n"), tok)
    with pytest.raises(ValueError, match="dataset is empty: .* is an empty file"):
        load_csv(write(tmp_path, "b.csv", ""), tok)
    with pytest.raises(ValueError, match="dataset is empty: .* has no data rows"):
        load_csv(write(tmp_path, "c.csv", HEADER), tok)
    bad_len = ROW.replace("went out Mark", "went outside today Mark")
    with pytest.raises(ValueError, match=r"row 2: clean and corrupted prompts have different token lengths \(8 vs 9\)"):
        load_csv(write(tmp_path, "d.csv", HEADER + ROW + bad_len), tok)
    with pytest.raises(ValueError, match=r"row 1: answer ' Xyzzyplugh' is not a single token"):
        load_csv(write(tmp_path, "e.csv", HEADER + ROW.replace(" Mary,", " Xyzzyplugh,", 1)), tok)
    with pytest.raises(ValueError, match="task file does not exist"):
        load_csv(tmp_path / "missing.csv", tok)


def test_jsonl_ok_and_errors(tok, tmp_path):
    row = {"clean": "The war lasted from the year 1750 to the year 17", "corrupted":
           "The war lasted from the year 1701 to the year 17", "answer": ["51", "99"], "wrong_answer": ["50", "49"],
           "metric": "prob_diff"}
    task = load_jsonl(write(tmp_path, "g.jsonl", json.dumps(row) + "\n\n" + json.dumps(row) + "\n"), tok)
    assert len(task) == 2 and task.metric == "prob_diff" and len(task.answers[0]) == 2
    missing = {k: v for k, v in row.items() if k != "corrupted"}
    with pytest.raises(ValueError, match=r"missing column\(s\) 'corrupted' on line 2"):
        load_jsonl(write(tmp_path, "h.jsonl", json.dumps(row) + "\n" + json.dumps(missing) + "\n"), tok)
    with pytest.raises(ValueError, match="dataset is empty"):
        load_jsonl(write(tmp_path, "i.jsonl", ""), tok)
    with pytest.raises(ValueError, match=r"line 1: clean and corrupted prompts have different token lengths"):
        load_jsonl(write(tmp_path, "j.jsonl", json.dumps(dict(row, corrupted="The war lasted")) + "\n"), tok)
    with pytest.raises(ValueError, match=r"line 1: wrong_answer '5000' is not a single token"):
        load_jsonl(write(tmp_path, "k.jsonl", json.dumps(dict(row, wrong_answer="5000")) + "\n"), tok)


def test_load_task_dispatch(tok, tmp_path):
    assert load_task("ioi", tok, n=5).name == "ioi"
    assert load_task("greater_than", tok, n=5).name == "greater-than"
    path = write(tmp_path, "mine.csv", HEADER + ROW + ROW + ROW)
    assert len(load_task(str(path), tok, n=2)) == 2
    with pytest.raises(ValueError, match="unknown task 'iio'; valid names: ioi, greater-than, induction"):
        load_task("iio", tok)
    with pytest.raises(ValueError, match="task file does not exist"):
        load_task(str(tmp_path / "nope.jsonl"), tok)
