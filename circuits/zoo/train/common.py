"""Pieces every zoo training script shares: thread/RNG isolation, optimiser, schedule, output.

Moving code here must not change a single float: on the same machine, with the same torch and
transformers versions and thread count, the scripts reproduce the shipped models bit for bit.
(On another processor the CPU kernels round differently and the weights differ; see
docs/zoo.md.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, processors
from tokenizers.models import WordLevel
from torch import nn
from transformers import GPT2Config, PreTrainedModel, PreTrainedTokenizerFast

from circuits.zoo.llama2c_tokenizer import save_fast_tokenizer

__all__ = [
    "SPECIAL_TOKENS",
    "adamw",
    "base_parser",
    "gpt2_config",
    "isolated_torch_state",
    "save_run",
    "warmup_cosine",
    "word_level_tokenizer",
]

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
"""Special tokens of every zoo tokenizer, ids 0..3."""
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


def word_level_tokenizer(vocab: dict[str, int], pre_tokenizer: Any, model_max_length: int) -> PreTrainedTokenizerFast:
    """A ``tokenizers`` WordLevel tokenizer over ``vocab`` (specials at ids 0..3) whose
    encoding prepends ``<bos>``; unknown words map to ``<unk>``."""
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1", special_tokens=[("<bos>", BOS_ID)]
    )
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def gpt2_config(vocab_size: int, n_positions: int, n_embd: int, n_layer: int, n_head: int, n_inner: int) -> GPT2Config:
    """A standard GPT-2 config without dropout, with tied embeddings and the zoo's special ids."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_inner=n_inner,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=True,
    )


@contextlib.contextmanager
def isolated_torch_state(threads: int) -> Iterator[None]:
    """Use ``threads`` torch threads and a forked global RNG; restore both afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(previous)


def adamw(model: nn.Module, lr: float, weight_decay: float) -> tuple[torch.optim.AdamW, list[nn.Parameter]]:
    """AdamW (β = 0.9, 0.98) over the trainable parameters, weight decay on matrices only."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )
    return optimizer, params


def warmup_cosine(step: int, lr: float, warmup: int, steps: int, decay_start: int | None = None) -> float:
    """Linear warm-up over ``warmup`` steps, constant until ``decay_start`` (default: the end of
    the warm-up), then cosine down to 10% of ``lr`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    start = warmup if decay_start is None else decay_start
    if step < start:
        return lr
    progress = (step - start) / max(1, steps - start)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def base_parser(doc: str, spec: Any) -> argparse.ArgumentParser:
    """The options every script has: ``--out --seed --steps --batch-size --lr --eval-size --threads``
    (defaults from the script's ``TrainSpec``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=spec.steps)
    parser.add_argument("--batch-size", type=int, default=spec.batch_size)
    parser.add_argument("--lr", type=float, default=spec.lr)
    parser.add_argument("--eval-size", type=int, default=spec.eval_size)
    parser.add_argument(
        "--threads", type=int, default=spec.threads, help="torch threads (1: as fast for these sizes, robust on a busy machine)"
    )
    return parser


def save_run(
    out: str | Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    summary: dict,
    module: str,
    argv: list[str] | None,
    threads: int,
) -> None:
    """Write the model folder: weights, tokenizer files and ``training.json`` (``summary`` plus
    the command, versions and thread count)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    save_fast_tokenizer(tokenizer, out)
    argv_used = sys.argv[1:] if argv is None else argv
    summary.update(
        {
            "command": f"python -m {module} " + shlex.join(argv_used),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "threads": threads,
            "machine": machine(),
        }
    )
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def machine() -> dict[str, str]:
    """The processor that trained a model: CPU kernels differ between processors, so weights are
    bit-identical only on the same kind of machine (same versions and thread count)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "arch": platform.machine(), "system": platform.system()}
