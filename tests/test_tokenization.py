"""Tests for circuits.zoo.llama2c_tokenizer: the llama2.c tokenizer conversion.

The reference below is an independent, line-by-line Python port of llama2.c's
``encode`` (run.c), working on the raw bytes of ``tok512.bin``; the converted
``transformers`` tokenizer must produce exactly the same ids.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from circuits.zoo.llama2c_tokenizer import (
    convert_llama2c_tokenizer,
    load_llama2c_tokenizer,
    read_llama2c_vocab,
    sentencepiece_pieces,
)

ROOT = Path(__file__).resolve().parents[1]
TOK512 = ROOT / "circuits" / "zoo" / "models" / "stories260k" / "tok512.bin"


# --------------------------------------------------------------------------- reference


def _read_bin(path: Path) -> tuple[list[bytes], list[float]]:
    """Parse tok512.bin independently of the package (header, then score/len/bytes)."""
    data = path.read_bytes()
    offset = 4
    pieces, scores = [], []
    while offset < len(data):
        score, length = struct.unpack_from("<fi", data, offset)
        offset += 8
        pieces.append(data[offset : offset + length])
        scores.append(score)
        offset += length
    return pieces, scores


class Llama2cReference:
    """A direct port of llama2.c run.c ``encode`` / ``decode``."""

    def __init__(self, path: Path) -> None:
        self.vocab, self.scores = _read_bin(path)
        self.lookup = {piece: i for i, piece in enumerate(self.vocab)}

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        raw = text.encode("utf-8")
        tokens: list[int] = []
        if bos:
            tokens.append(1)
        if raw:
            tokens.append(self.lookup[b" "])  # dummy prefix
        buf = bytearray()
        for k, c in enumerate(raw):
            if (c & 0xC0) != 0x80:
                buf = bytearray()
            buf.append(c)
            nxt = raw[k + 1] if k + 1 < len(raw) else 0
            if (nxt & 0xC0) == 0x80 and len(buf) < 4:
                continue
            piece_id = self.lookup.get(bytes(buf), -1)
            if piece_id != -1:
                tokens.append(piece_id)
            else:
                tokens.extend(b + 3 for b in buf)
            buf = bytearray()
        while True:
            best_score, best_id, best_idx = -1e10, -1, -1
            for i in range(len(tokens) - 1):
                merged = self.vocab[tokens[i]] + self.vocab[tokens[i + 1]]
                piece_id = self.lookup.get(merged, -1)
                if piece_id != -1 and self.scores[piece_id] > best_score:
                    best_score, best_id, best_idx = self.scores[piece_id], piece_id, i
            if best_idx == -1:
                break
            tokens[best_idx] = best_id
            del tokens[best_idx + 1]
        if eos:
            tokens.append(2)
        return tokens

    def decode(self, ids: list[int]) -> str:
        """Concatenate run.c ``decode(prev_token, token)`` over ids[1:] (the prompt's first
        token, BOS, is never printed)."""
        out = bytearray()
        for prev, tok in zip(ids, ids[1:]):
            piece = self.vocab[tok]
            if prev == 1 and piece.startswith(b" "):
                piece = piece[1:]
            if 3 <= tok < 259:
                piece = bytes([tok - 3])
            out += piece
        return out.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def reference() -> Llama2cReference:
    return Llama2cReference(TOK512)


@pytest.fixture(scope="module")
def tokenizer():
    return load_llama2c_tokenizer(TOK512, vocab_size=512)


STRINGS = [
    "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the park. One day, she saw a big, red ball.",
    'Tom said, "Can I have the toy?" Mom smiled and said, "Yes, you can!"',
    "The cat and the dog were best friends. They played all day long.",
    "Lily and Ben went to the store. Ben gave a flower to Lily.",
    "hello",
    "Hello, world!",
    "a",
    " ",
    "   leading spaces",
    "trailing spaces   ",
    "double  space and\ttab",
    "line one\nline two\n\nline four",
    "1234567890 and 3.14159 and 2023-11-25",
    "It cost $5.99 (plus 10% tax) & 2 * 3 = 6; ok?",
    "Punctuation: ... !!! ??? --- ;;; ''' \"\"\" ``` ~~~ |||",
    "<html> [brackets] {braces} \\backslash/ @at #hash ^caret _under",
    "café, naïve, résumé, jalapeño, Zoë",
    "日本語のテキスト and 中文",
    "Emoji: 😀🎉👍 end",
    "Привет, мир! Γειά σου κόσμε",
    "“Curly quotes” and ‘single’ — em dash – en dash … ellipsis",
    "non\u00a0breaking space and hair\u200aspace",
    "ALL CAPS TEXT WITH SOME lower case",
    "The end.",
    "x" * 50,
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "",
]


def _random_strings(n: int, seed: int) -> list[str]:
    """Seeded random strings over letters, digits, spaces, punctuation and non-ASCII."""
    alphabet = (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        "      .,!?;:'\"-()\n\téèñüß€™…“”’日本😀"
    )
    words = ["the", "The", "and", "was", "Lily", "Tom", "play", "ball", "happy", "said", "went", "little"]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.5:
                parts.append(rng.choice(words))
            else:
                parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))))
        out.append(rng.choice(["", " "]).join(parts))
    return out


# --------------------------------------------------------------------------- tests


def test_vocab_parsing() -> None:
    vocab = read_llama2c_vocab(TOK512, vocab_size=512)
    assert vocab.max_token_length == 7
    assert len(vocab.pieces) == len(vocab.scores) == 512
    pieces = sentencepiece_pieces(vocab)
    assert pieces[:3] == ["<unk>", "<s>", "</s>"]
    assert pieces[3] == "<0x00>" and pieces[258] == "<0xFF>"
    assert pieces[410] == "\u2581"
    assert all(" " not in p for p in pieces)


def test_read_rejects_wrong_size() -> None:
    with pytest.raises(ValueError):
        read_llama2c_vocab(TOK512, vocab_size=513)


def test_special_tokens(tokenizer) -> None:
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == 0
    assert len(tokenizer) == 512


@pytest.mark.parametrize("text", STRINGS)
def test_encode_matches_llama2c(tokenizer, reference: Llama2cReference, text: str) -> None:
    assert tokenizer(text).input_ids == reference.encode(text, bos=True)
    assert tokenizer(text, add_special_tokens=False).input_ids == reference.encode(text, bos=False)


@pytest.mark.parametrize("text", STRINGS)
def test_decode_roundtrip(tokenizer, reference: Llama2cReference, text: str) -> None:
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(ids[1:]) == text
    if text:  # llama2.c strips the dummy space only right after BOS
        assert reference.decode(ids) == text


def test_random_strings_match_llama2c(tokenizer, reference: Llama2cReference) -> None:
    texts = _random_strings(300, seed=0)
    batch = tokenizer(texts).input_ids
    for text, ids in zip(texts, batch):
        assert ids == reference.encode(text), text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_padding_uses_unk(tokenizer) -> None:
    enc = tokenizer(["Once upon a time", "Hi"], padding=True)
    assert enc.input_ids[1][-1] == 0
    assert enc.attention_mask[1][-1] == 0


def test_save_and_autotokenizer(tmp_path: Path, tokenizer) -> None:
    convert_llama2c_tokenizer(TOK512, tmp_path, vocab_size=512, model_max_length=512)
    assert (tmp_path / "tokenizer.json").is_file()
    assert (tmp_path / "tokenizer_config.json").is_file()
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded.model_max_length == 512
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 0)
    for text in STRINGS:
        assert loaded(text).input_ids == tokenizer(text).input_ids
        assert loaded.decode(loaded(text).input_ids, skip_special_tokens=True) == text
