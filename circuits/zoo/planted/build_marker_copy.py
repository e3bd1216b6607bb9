"""Build ``marker_copy``: a hand-compiled 2-layer GPT-2 that copies the token after a marker.

Task: ``<bos> x1 ... x13`` with one ``<m>`` at position p (1 <= p <= 11) and content
tokens ``t0..t15`` elsewhere; at the last position the model predicts ``x_{p+1}``, the
token right after the marker. Corruption: an independent prompt whose marker sits at a
different position and whose answer differs; metric ``logit_diff`` (clean answer minus
corrupted answer).

Circuit (all by construction; see docs/planted.md for the subspace layout):

* ``a0.h2`` previous-token head (positional, saturated): its value reads "is the marker"
  from the token embedding and writes ``PREVM`` (= "the previous token was the marker").
* ``a1.h1`` mover (saturated): query = the constant direction, key = ``PREVM`` -> it
  attends to position p+1; value = a Hadamard code of the token there -> ``CODE``.
* ``m1`` decoder: 16 ReLU units threshold the code (a clean-up memory) -> ``ANS``, the
  only subspace the unembedding reads for content tokens.

Ground-truth edges: ``input->a0.h2<v>``, ``a0.h2->a1.h1<k>`` (into the key of a saturated
head: plain EAP under-ranks it), ``input->a1.h1<v>``, ``a1.h1->m1``, ``m1->logits``.

Distractors (real, task-irrelevant work, large and variable signals): a0.h0 uniform
token histogram; a0.h1 attends to the marker (saturated) and writes its position; a0.h3
attends to itself and writes a token projection; m0 mixes all of these non-linearly;
a1.h0 reads the marker position (Q-composition with a0.h1) and copies the token *before*
the marker with the same code as the mover (a decoy); a1.h2 a previous-token head over
m0's output; a1.h3 a soft content head; 16 units of m1 turn decoy/distractor signals
into the logits of the auxiliary tokens ``z0..z3`` (never an answer or a wrong answer).

``python -m circuits.zoo.planted.build_marker_copy --out DIR`` (default: the package folder).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ...graph import Graph, Provenance
from ._common import CONST, Head, Space, hadamard_codes, randn, save_model_folder, write_gpt2

NAME = "marker_copy"
SEED = 1234
D, H, DH, L, INNER, NPOS = 128, 4, 32, 2, 32, 16
SEQ_LEN = 14
SPECIALS = ["<bos>", "<pad>", "<unk>", "<m>"]
CONTENT = [f"t{i}" for i in range(16)]
AUX = [f"z{i}" for i in range(4)]
VOCAB = SPECIALS + CONTENT + AUX
BOS, PAD, UNK, MARK = 0, 1, 2, 3
CONTENT_IDS = list(range(4, 20))
N_INPUT = 20  # ids that can appear in prompts (specials + content); aux ids are outputs only
GAP = 16.0  # attention-score gap of every saturated head
BETA = 12.0  # unembedding gain: clean logit of the answer

GROUND_TRUTH = {
    "input->a0.h2<v>": "previous-token head reads 'is the marker' from the token embedding",
    "a0.h2->a1.h1<k>": "mover's key = 'previous token was the marker' (K-composition; saturated attention)",
    "input->a1.h1<v>": "mover's value = code of the token after the marker",
    "a1.h1->m1": "m1's decoder units read the mover's code",
    "m1->logits": "m1 writes the decoded answer into the unembedding subspace",
}

HEAD_ROLES = {
    "a0.h0": "distractor: uniform attention, token histogram -> D_hist",
    "a0.h1": "distractor: attends to the marker (saturated), writes its position -> D_mpos",
    "a0.h2": "CIRCUIT previous-token head (saturated, positional): 'prev was marker' -> PREVM",
    "a0.h3": "distractor: attends to itself, token projection -> D_self",
    "m0": "distractor MLP: ReLU mix of token, D_hist, D_mpos, D_self -> D_m0",
    "a1.h0": "decoy: Q-composition with a0.h1, copies the token BEFORE the marker (same code as the mover) -> D_before",
    "a1.h1": "CIRCUIT mover (saturated): q = constant, k = PREVM, v = token code -> CODE",
    "a1.h2": "distractor: previous-token head over m0's output -> D_l1",
    "a1.h3": "distractor: soft content attention (q from D_hist, k from tokens) -> D_soft",
    "m1": "CIRCUIT decoder units (16 ReLU, CODE -> ANS) + 16 distractor units (decoy/distractor signals -> AUX)",
}

TASK = {
    "name": NAME,
    "kind": "marker_copy",
    "description": "copy the token right after the marker <m>; predicted at the last position",
    "seq_len": SEQ_LEN,
    "bos_id": BOS,
    "pad_id": PAD,
    "marker_id": MARK,
    "content_ids": CONTENT_IDS,
    "marker_positions": [1, SEQ_LEN - 3],
    "answer_position": "last",
    "answer": "the token at marker position + 1",
    "wrong": "the corrupted prompt's answer",
    "corruption": "an independent prompt with a different marker position and a different answer",
    "metric": "logit_diff",
}


def build_model() -> tuple[GPT2LMHeadModel, Space]:  # long: one hand-compiled construction, read top to bottom
    g = torch.Generator().manual_seed(SEED)
    sp = Space(D, seed=SEED, mean_zero=True)
    u_c = sp.alloc("const", 1)[0]
    TOK = sp.alloc("tok", N_INPUT)
    POS = sp.alloc("pos", NPOS)
    PREVM = sp.alloc("prev_marker", 1)[0]
    CODE = sp.alloc("code", 8)
    ANS = sp.alloc("answer", 16)
    D_hist = sp.alloc("d_hist", 6)
    D_mpos = sp.alloc("d_mpos", NPOS)
    D_self = sp.alloc("d_self", 6)
    D_m0 = sp.alloc("d_m0", 8)
    D_before = sp.alloc("d_before", 8)
    D_l1 = sp.alloc("d_l1", 6)
    D_soft = sp.alloc("d_soft", 6)
    AUXS = sp.alloc("aux", 4)
    codes = hadamard_codes(16, 8, seed=SEED)  # [16 content tokens, 8]
    tok_code = torch.zeros(N_INPUT, 8, dtype=torch.float64)
    tok_code[4:20] = codes
    code_reader = TOK.T @ tok_code  # [d, 8]: normalised residual -> code of its token

    scale = DH**-0.5
    s = math.sqrt(GAP / scale)  # q and k gain per slot for a score gap of GAP
    g_mpos = 2.0

    def positional(head: Head, offset: int) -> None:
        """Query at p matches key at p - offset (saturated)."""
        for j in range(NPOS - offset):
            head.W_Q[:, j] = s * POS[j + offset]
            head.W_K[:, j] = s * POS[j]

    # ---------------- layer 0
    h00 = Head(D, DH, role=HEAD_ROLES["a0.h0"])  # uniform: q = k = 0
    R_hist = randn(N_INPUT, 6, g=g, scale=1.5)
    h00.W_V[:, :6] = TOK.T @ R_hist
    h00.W_O[:6] = D_hist

    h01 = Head(D, DH, role=HEAD_ROLES["a0.h1"])
    h01.W_Q[:, 0] = s * u_c / CONST
    h01.W_K[:, 0] = s * TOK[MARK]
    h01.W_V[:, :NPOS] = POS.T
    h01.W_O[:NPOS] = g_mpos * D_mpos

    h02 = Head(D, DH, role=HEAD_ROLES["a0.h2"])
    positional(h02, 1)
    h02.W_V[:, 0] = TOK[MARK]
    h02.W_O[0] = PREVM

    h03 = Head(D, DH, role=HEAD_ROLES["a0.h3"])
    positional(h03, 0)
    R_self = randn(N_INPUT, 6, g=g, scale=2.0)
    h03.W_V[:, :6] = TOK.T @ R_self
    h03.W_O[:6] = D_self

    # m0: distractor only
    W_in0 = (
        TOK.T @ randn(N_INPUT, INNER, g=g, scale=0.7)
        + D_hist.T @ randn(6, INNER, g=g, scale=0.5)
        + D_mpos.T @ randn(NPOS, INNER, g=g, scale=0.7)
        + D_self.T @ randn(6, INNER, g=g, scale=0.3)
    )
    b_in0 = randn(INNER, g=g, scale=0.5)
    W_out0 = randn(INNER, 8, g=g, scale=0.2) @ D_m0

    # ---------------- layer 1
    h10 = Head(D, DH, role=HEAD_ROLES["a1.h0"])
    for j in range(NPOS - 1):  # query "marker at j+1" (from a0.h1) matches key position j
        h10.W_Q[:, j] = s * D_mpos[j + 1] / g_mpos
        h10.W_K[:, j] = s * POS[j]
    h10.W_V[:, :8] = code_reader
    h10.W_O[:8] = 2.0 * D_before

    h11 = Head(D, DH, role=HEAD_ROLES["a1.h1"])
    h11.W_Q[:, 0] = s * u_c / CONST
    h11.W_K[:, 0] = s * PREVM
    h11.W_V[:, :8] = code_reader
    h11.W_O[:8] = CODE

    h12 = Head(D, DH, role=HEAD_ROLES["a1.h2"])
    positional(h12, 1)
    h12.W_V[:, :8] = D_m0.T
    h12.W_O[:8] = randn(8, 6, g=g, scale=0.4) @ D_l1

    h13 = Head(D, DH, role=HEAD_ROLES["a1.h3"])
    h13.W_Q[:, :6] = D_hist.T * 0.8
    h13.W_K[:, :6] = (TOK.T @ R_hist) * 0.8
    h13.W_V[:, :6] = TOK.T @ randn(N_INPUT, 6, g=g, scale=1.5)
    h13.W_O[:6] = D_soft

    # m1: 16 decoder units (circuit) + 16 distractor units
    W_in1 = torch.zeros(D, INNER, dtype=torch.float64)
    b_in1 = torch.zeros(INNER, dtype=torch.float64)
    W_out1 = torch.zeros(INNER, D, dtype=torch.float64)
    kappa = 2.0  # pre-activation: +1 for the coded token, <= -1 for every other
    W_in1[:, :16] = kappa * (CODE.T @ codes.T)
    b_in1[:16] = -kappa / 2
    W_out1[:16] = ANS
    W_in1[:, 16:] = (
        D_before.T @ randn(8, 16, g=g, scale=0.8)
        + D_l1.T @ randn(6, 16, g=g, scale=0.4)
        + D_soft.T @ randn(6, 16, g=g, scale=0.4)
        + D_m0.T @ randn(8, 16, g=g, scale=0.3)
    )
    b_in1[16:] = randn(16, g=g, scale=0.5)
    W_out1[16:] = randn(16, 4, g=g, scale=0.15) @ AUXS

    # ---------------- embeddings and unembedding
    V = len(VOCAB)
    wte = torch.zeros(V, D, dtype=torch.float64)
    wte[:] = CONST * u_c
    wte[:N_INPUT] += TOK
    wpe = POS.clone()
    lm_head = torch.zeros(V, D, dtype=torch.float64)
    lm_head[4:20] = BETA * ANS
    lm_head[20:24] = 2.5 * AUXS + (2.0 / CONST) * u_c
    lm_head[:4] = (-8.0 / CONST) * u_c

    cfg = GPT2Config(
        vocab_size=V, n_positions=NPOS, n_embd=D, n_layer=L, n_head=H, n_inner=INNER,
        activation_function="relu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=BOS, pad_token_id=PAD,
    )
    model = GPT2LMHeadModel(cfg)
    write_gpt2(
        model, wte=wte, wpe=wpe, heads=[[h00, h01, h02, h03], [h10, h11, h12, h13]],
        mlps=[(W_in0, b_in0, W_out0), (W_in1, b_in1, W_out1)], lm_head=lm_head,
        norm_weight=CONST / math.sqrt(D),
    )
    return model.eval(), sp


def ground_truth_graph(sp: Space) -> Graph:
    facts = {
        "name": NAME,
        "kind": "planted ground truth",
        "description": (
            "Hand-compiled circuit of marker_copy: the previous-token head a0.h2 marks the position after <m>; "
            "the mover a1.h1 attends there (key from a0.h2, saturated) and copies a code of the token; "
            "m1's ReLU units decode it into the unembedding subspace. Ground truth = the edges whose patching "
            "changes logit_diff (the previous-token head's q/k and the mover's q read position / the constant "
            "direction, identical in clean and corrupted runs, so those edges do not matter)."
        ),
        "metric": "logit_diff",
        "ablation": "patching: removed edges carry the corrupted run of task.json's corruption",
        "edges": GROUND_TRUTH,
        "nodes": HEAD_ROLES,
        "residual_layout": sp.layout(),
        "const": CONST,
        "attention_gap": GAP,
    }
    return Graph.build(L, H, False, Provenance(model_type="gpt2", extra=facts)).with_circuit(list(GROUND_TRUTH))


def build(out: Path) -> Path:
    torch.manual_seed(SEED)
    model, sp = build_model()
    save_model_folder(out, model, VOCAB, bos="<bos>", pad="<pad>", unk="<unk>",
                      ground_truth=ground_truth_graph(sp), task=TASK)
    return Path(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / NAME)
    args = ap.parse_args(argv)
    print(f"wrote {build(args.out)}")


if __name__ == "__main__":
    main()
