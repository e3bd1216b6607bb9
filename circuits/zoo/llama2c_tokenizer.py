"""Tokenizer conversion: llama2.c ``tokenizer.bin`` files to ``transformers`` tokenizers.

Karpathy's llama2.c stores a SentencePiece BPE vocabulary in its own binary format
(``tok512.bin`` for stories260K)::

    int32 max_token_length
    vocab_size times: float32 score, int32 byte_length, byte_length bytes (UTF-8 piece)

llama2.c's exporter rewrites SentencePiece's word-boundary mark ``"▁"`` (U+2581) as a
plain space and renames the control pieces 1 and 2 to ``"\\n<s>\\n"`` and ``"\\n</s>\\n"``.
Ids 3..258 are the byte pieces ``<0x00>``..``<0xFF>`` (id = byte + 3).

llama2.c's ``encode`` (run.c) prepends one dummy space when the text is non-empty,
splits the text into UTF-8 characters (a character that is not a piece becomes its byte
pieces), then repeatedly merges the adjacent pair whose concatenation is a piece with
the highest score. That is exactly SentencePiece BPE, which ``tokenizers`` expresses as
a ``BPE`` model whose merges are ranked by the merged piece's score (as
``transformers.convert_slow_tokenizer`` does for SentencePiece models).

The converted tokenizer follows the Llama / SentencePiece conventions of ``transformers``:

* pieces use ``"▁"`` for a space; ids 0, 1, 2 are ``<unk>``, ``<s>`` (BOS), ``</s>`` (EOS);
* the normalizer prepends ``"▁"`` to non-empty text and replaces ``" "`` with ``"▁"``;
* encoding adds BOS (``add_special_tokens=True``), never EOS, like llama2.c's generation;
* decoding maps ``"▁"`` back to spaces, byte pieces back to bytes and strips the single
  leading space (the dummy prefix);
* ``pad_token`` is ``<unk>`` (id 0): llama2.c has no pad piece and the vocabulary must not
  grow (the model's embedding has exactly ``vocab_size`` rows). Pad positions must be
  masked with the attention mask; their logits are meaningless.

Known divergences from llama2.c's ``encode`` (both are rare in practice):

* text containing a literal ``"▁"`` (U+2581) is treated as a space here (as in every
  SentencePiece/Llama tokenizer), whereas llama2.c encodes it as its three bytes;
* the literal strings ``"<s>"``, ``"</s>"`` and ``"<unk>"`` in text are parsed as the
  special tokens by ``transformers`` (llama2.c spells them character by character).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

__all__ = [
    "Llama2cVocab",
    "SPACE_MARK",
    "convert_llama2c_tokenizer",
    "build_llama2c_tokenizer_object",
    "load_llama2c_tokenizer",
    "read_llama2c_vocab",
    "save_fast_tokenizer",
    "sentencepiece_bpe_merges",
    "sentencepiece_pieces",
]

SPACE_MARK = "\u2581"
"""SentencePiece's word-boundary mark "▁", which stands for a space in pieces."""

UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<unk>", "<s>", "</s>"
_NUM_SPECIAL = 3  # ids 0, 1, 2
_NUM_BYTES = 256  # ids 3 .. 258
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


@dataclass(frozen=True)
class Llama2cVocab:
    """The raw contents of a llama2.c tokenizer file.

    Attributes:
        pieces: piece strings as stored (spaces as ``" "``, BOS as ``"\\n<s>\\n"``).
        scores: one float score per piece; BPE merges prefer higher scores.
        max_token_length: the header field (longest piece in bytes).
    """

    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    max_token_length: int


def read_llama2c_vocab(path: str | Path, vocab_size: int | None = None) -> Llama2cVocab:
    """Parse a llama2.c ``tokenizer.bin`` file.

    Args:
        path: the ``.bin`` file.
        vocab_size: expected number of pieces; ``None`` reads pieces until the end of
            the file (the format does not store the count).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is truncated, a piece is not UTF-8, or the number of
            pieces differs from ``vocab_size``.
    """
    data = Path(path).read_bytes()
    if len(data) < 4:
        raise ValueError(f"{path}: too short for a llama2.c tokenizer header")
    (max_token_length,) = struct.unpack_from("<i", data, 0)
    offset = 4
    pieces: list[str] = []
    scores: list[float] = []
    while offset < len(data) and (vocab_size is None or len(pieces) < vocab_size):
        if offset + 8 > len(data):
            raise ValueError(f"{path}: truncated at piece {len(pieces)}")
        score, length = struct.unpack_from("<fi", data, offset)
        offset += 8
        if length < 0 or offset + length > len(data):
            raise ValueError(f"{path}: bad length {length} for piece {len(pieces)}")
        raw = data[offset : offset + length]
        offset += length
        try:
            pieces.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: piece {len(pieces)} is not UTF-8: {raw!r}") from err
        scores.append(score)
    if vocab_size is not None and len(pieces) != vocab_size:
        raise ValueError(f"{path}: expected {vocab_size} pieces, found {len(pieces)}")
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} trailing bytes after {len(pieces)} pieces")
    return Llama2cVocab(tuple(pieces), tuple(scores), max_token_length)


def sentencepiece_pieces(vocab: Llama2cVocab) -> list[str]:
    """Map llama2.c piece strings back to SentencePiece spelling.

    Ids 0, 1, 2 become ``<unk>``, ``<s>``, ``</s>``; spaces become ``"▁"``; byte pieces
    (ids 3..258) are checked to be ``<0x00>``..``<0xFF>`` in order.

    Raises:
        ValueError: if the special or byte pieces are not where llama2.c puts them, or
            two pieces collide after respelling.
    """
    pieces = list(vocab.pieces)
    if len(pieces) < _NUM_SPECIAL + _NUM_BYTES:
        raise ValueError(f"vocabulary has {len(pieces)} pieces; expected at least 259")
    if pieces[0] != UNK_TOKEN or pieces[1].strip() != BOS_TOKEN or pieces[2].strip() != EOS_TOKEN:
        raise ValueError(f"unexpected special pieces {pieces[:3]!r}")
    for byte in range(_NUM_BYTES):
        if pieces[_NUM_SPECIAL + byte] != f"<0x{byte:02X}>":
            raise ValueError(f"piece {_NUM_SPECIAL + byte} is {pieces[_NUM_SPECIAL + byte]!r}, expected <0x{byte:02X}>")
    out = [UNK_TOKEN, BOS_TOKEN, EOS_TOKEN]
    out += pieces[_NUM_SPECIAL : _NUM_SPECIAL + _NUM_BYTES]
    out += [p.replace(" ", SPACE_MARK) for p in pieces[_NUM_SPECIAL + _NUM_BYTES :]]
    if len(set(out)) != len(out):
        raise ValueError("duplicate pieces after mapping spaces to '▁'")
    return out


def sentencepiece_bpe_merges(
    pieces: list[str], scores: list[float] | tuple[float, ...], mergeable: list[bool]
) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's score-greedy merging.

    For every mergeable piece and every split of it into two mergeable pieces, emit the
    merge ``(left, right)``; merges are ranked by the merged piece's score, highest
    first, ties broken by the merged piece's id (the same ranking as
    ``SpmConverter.build_tokenizer_from_spm_proto`` in ``transformers``). Applying the
    lowest-rank merge present, leftmost first, is then the same as llama2.c's loop of
    "merge the adjacent pair whose concatenation has the highest score".

    Args:
        pieces: piece strings, index = id.
        scores: one score per piece.
        mergeable: which pieces take part in merges (normal pieces: not special, not
            byte pieces).
    """
    normal = {p: (float(scores[i]), i) for i, p in enumerate(pieces) if mergeable[i]}
    ranked: list[tuple[float, int, str, str]] = []
    for piece, (score, index) in normal.items():
        for split in range(1, len(piece)):
            left, right = piece[:split], piece[split:]
            if left in normal and right in normal:
                ranked.append((-score, index, left, right))
    return [(left, right) for _, _, left, right in sorted(ranked)]


def build_llama2c_tokenizer_object(vocab: Llama2cVocab) -> Tokenizer:
    """Build the ``tokenizers.Tokenizer`` (BPE with byte fallback) for a llama2.c vocabulary."""
    pieces = sentencepiece_pieces(vocab)
    mergeable = [i >= _NUM_SPECIAL + _NUM_BYTES and not _BYTE_PIECE.fullmatch(p) for i, p in enumerate(pieces)]
    merges = sentencepiece_bpe_merges(pieces, vocab.scores, mergeable)
    model = BPE(
        vocab={p: i for i, p in enumerate(pieces)},
        merges=merges,
        unk_token=UNK_TOKEN,
        fuse_unk=True,
        byte_fallback=True,
        dropout=None,
    )
    tokenizer = Tokenizer(model)
    # Prepend acts only on non-empty text, like llama2.c's dummy prefix.
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPACE_MARK), normalizers.Replace(" ", SPACE_MARK)]
    )
    tokenizer.pre_tokenizer = None
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(SPACE_MARK, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN}:0 $A:0",
        pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, 1)],
    )
    tokenizer.add_special_tokens([UNK_TOKEN, BOS_TOKEN, EOS_TOKEN])
    return tokenizer


def load_llama2c_tokenizer(
    path: str | Path, vocab_size: int | None = None, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """Load a llama2.c ``tokenizer.bin`` as a ``transformers`` fast tokenizer.

    Args:
        path: the llama2.c tokenizer file (e.g. ``tok512.bin``).
        vocab_size: expected number of pieces (``None``: read to the end of the file).
        model_max_length: the model's context length, stored in the tokenizer config.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``bos_token="<s>"`` (id 1), ``eos_token="</s>"``
        (id 2), ``unk_token="<unk>"`` (id 0) and ``pad_token="<unk>"`` (id 0; see the module
        docstring). ``tok(text)`` prepends BOS.
    """
    vocab = read_llama2c_vocab(path, vocab_size)
    kwargs: dict[str, object] = {}
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=build_llama2c_tokenizer_object(vocab),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
    return tokenizer


def convert_llama2c_tokenizer(
    path: str | Path, out_dir: str | Path, vocab_size: int | None = None, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """Convert a llama2.c tokenizer file and save it to ``out_dir``.

    Writes ``tokenizer.json`` and ``tokenizer_config.json`` so that
    ``AutoTokenizer.from_pretrained(out_dir)`` loads the same tokenizer offline.
    Returns the converted tokenizer.
    """
    tokenizer = load_llama2c_tokenizer(path, vocab_size, model_max_length)
    save_fast_tokenizer(tokenizer, out_dir)
    return tokenizer


def save_fast_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> Path:
    """Save a fast tokenizer so that ``AutoTokenizer.from_pretrained(out_dir)`` loads it.

    ``transformers`` 5 records ``"tokenizer_class": "TokenizersBackend"``, a name that
    ``transformers`` 4 does not know; the config is rewritten to the alias
    ``"PreTrainedTokenizerFast"``, which both versions resolve to a tokenizer that loads
    ``tokenizer.json`` verbatim (never a model-specific class such as ``LlamaTokenizer``,
    which would rebuild its own normalizer). Returns the path of ``tokenizer.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out / "tokenizer.json"
