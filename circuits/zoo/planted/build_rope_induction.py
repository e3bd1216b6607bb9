"""Build ``rope_induction``: a hand-compiled 2-layer Llama (RMSNorm, rotary, SwiGLU) doing induction.

Task: ``<bos> r1 ... r12 r_i`` with twelve distinct content tokens and a final repeat of
``r_i`` (1 <= i <= 11); the model predicts ``r_{i+1}``. Corruption: an independent prompt
with a different final token and a different answer; metric ``logit_diff``.

Circuit (all by construction; see docs/planted.md):

* ``a0.h2`` previous-token head built from rotary alone (Llama has no position
  embedding): query and key are constant vectors on the two fastest rotary pairs whose
  amplitudes (a small LP) make the score peak at offset 1 with a margin of 16; its value
  reads a Hadamard code of the token -> ``PT_raw`` at the next position.
* ``m0`` clean-up: 16 SwiGLU units ``silu(gate) * up`` with ``gate = 40 (code . PT_raw - 1/2)``
  and ``up = 1`` (from the constant direction) turn the code into a one-hot ``PT``.
* ``a1.h1`` induction head (saturated): query = the current token (from the embedding),
  key = ``PT`` (from m0), both on rotary pairs too slow to rotate within 16 positions;
  value = the attended token -> ``ANS``, which the unembedding reads.

Ground-truth edges: ``input->a0.h2<v>``, ``a0.h2->m0``, ``m0->a1.h1<k>``,
``input->a1.h1<q>``, ``input->a1.h1<v>``, ``a1.h1->logits``. The q and k edges enter a
saturated head, where plain EAP under-ranks them.

Distractors: a0.h0 uniform histogram; a0.h1 duplicate-token head (attends to BOS and to
earlier copies of the current token; writes a duplicate detector); a0.h3 a
previous-previous-token head (rotary peak at offset 2, a decoy for a0.h2); 16 m0 units
mixing them; a1.h0 a decoy with exactly the induction head's query and key that writes
the attended token's code elsewhere; a1.h2 previous-token head over m0's distractor
output; a1.h3 soft content attention; m1 turns decoy/distractor signals into the logits
of ``z0..z3`` (never answers).

``python -m circuits.zoo.planted.build_rope_induction --out DIR`` (default: the package folder).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ...graph import Graph, Provenance
from ._common import CONST, Head, Space, hadamard_codes, positional_amplitudes, randn, save_model_folder, write_llama

NAME = "rope_induction"
SEED = 4321
D, H, DH, L, INNER, MAXPOS = 128, 4, 32, 2, 32, 32
N_DISTINCT = 12
SEQ_LEN = N_DISTINCT + 2
ROPE_THETA = 1e8
SPECIALS = ["<bos>", "<pad>", "<unk>"]
CONTENT = [f"t{i}" for i in range(16)]
AUX = [f"z{i}" for i in range(4)]
VOCAB = SPECIALS + CONTENT + AUX
BOS, PAD, UNK = 0, 1, 2
CONTENT_IDS = list(range(3, 19))
N_INPUT = 19
GAP = 16.0
BETA = 12.0
FAST_PAIRS = (0, 1)  # rotary pairs used for positional attention (ω = 1, 0.316)
SLOW_DIMS = list(range(8, 16)) + list(range(24, 32))  # pairs 8..15: ω <= 1e-4, static over 16 positions
SPARE_SLOW_DIM = 7  # pair 7: ω = 3e-4

GROUND_TRUTH = {
    "input->a0.h2<v>": "previous-token head reads the token's code from the embedding",
    "a0.h2->m0": "m0's clean-up units read the previous token's code",
    "m0->a1.h1<k>": "induction head's key = one-hot previous token (from m0; saturated attention)",
    "input->a1.h1<q>": "induction head's query = the current token (saturated attention)",
    "input->a1.h1<v>": "induction head's value = the attended token",
    "a1.h1->logits": "induction head writes the answer into the unembedding subspace",
}

HEAD_ROLES = {
    "a0.h0": "distractor: uniform attention, token histogram -> D_hist",
    "a0.h1": "distractor: duplicate-token head (attends to BOS and to copies of the current token) -> D_dup",
    "a0.h2": "CIRCUIT previous-token head (rotary, saturated): code of the previous token -> PT_raw",
    "a0.h3": "decoy: previous-previous-token head (rotary peak at offset 2) -> D_pp",
    "m0": "CIRCUIT clean-up units (16 SwiGLU, PT_raw -> one-hot PT) + 16 distractor units -> D_m0",
    "a1.h0": "decoy: the induction head's exact query and key, writes the attended token's code -> D_decoy",
    "a1.h1": "CIRCUIT induction head (saturated): q = current token, k = PT, v = token -> ANS",
    "a1.h2": "distractor: previous-token head over m0's distractor output -> D_l1",
    "a1.h3": "distractor: soft content attention (q from D_hist, k from tokens) -> D_soft",
    "m1": "distractor MLP: decoy/distractor signals -> AUX (logits of z0..z3)",
}

TASK = {
    "name": NAME,
    "kind": "induction",
    "description": "induction: the last token repeats an earlier one; predict the token that followed it",
    "seq_len": SEQ_LEN,
    "n_distinct": N_DISTINCT,
    "bos_id": BOS,
    "pad_id": PAD,
    "content_ids": CONTENT_IDS,
    "answer_position": "last",
    "answer": "the token after the first occurrence of the last token",
    "wrong": "the corrupted prompt's answer",
    "corruption": "an independent prompt with a different last token and a different answer",
    "metric": "logit_diff",
}


def rope_omegas() -> torch.Tensor:
    """The rotary frequencies exactly as transformers computes them (float32)."""
    return 1.0 / (ROPE_THETA ** (torch.arange(0, DH, 2, dtype=torch.float) / DH))


def build_model() -> tuple[LlamaForCausalLM, Space]:  # long: one hand-compiled construction, read top to bottom
    g = torch.Generator().manual_seed(SEED)
    sp = Space(D, seed=SEED, mean_zero=False)
    u_c = sp.alloc("const", 1)[0]
    TOK = sp.alloc("tok", N_INPUT)
    PT_raw = sp.alloc("pt_raw", 8)
    PT = sp.alloc("pt", 16)
    ANS = sp.alloc("answer", 16)
    D_hist = sp.alloc("d_hist", 6)
    D_dup = sp.alloc("d_dup", 6)
    D_pp = sp.alloc("d_pp", 6)
    D_m0 = sp.alloc("d_m0", 8)
    D_decoy = sp.alloc("d_decoy", 8)
    D_l1 = sp.alloc("d_l1", 6)
    D_soft = sp.alloc("d_soft", 6)
    AUXS = sp.alloc("aux", 4)
    codes = hadamard_codes(16, 8, seed=SEED)
    tok_code = torch.zeros(N_INPUT, 8, dtype=torch.float64)
    tok_code[3:19] = codes
    code_reader = TOK.T @ tok_code  # [d, 8]
    content_tok = TOK[3:19]  # [16, d]

    scale = DH**-0.5
    s = math.sqrt(GAP / scale)
    omegas = rope_omegas().double()
    amps, margin = positional_amplitudes([float(omegas[i]) for i in FAST_PAIRS], peak=1, max_delta=MAXPOS // 2 - 1)
    peak_score = GAP / margin
    sp.meta["positional_amplitudes"] = {f"pair {i} (omega {float(omegas[i]):.4g})": a for i, a in zip(FAST_PAIRS, amps.tolist())}

    def positional(head: Head, offset: int) -> None:
        """Constant query/key on the fast rotary pairs: score(Δ) = S Σ A_i cos(ω_i (Δ - offset))."""
        T = peak_score / scale
        for a, i in zip(amps.tolist(), FAST_PAIRS):
            w = float(omegas[i])
            r = math.sqrt(T * a)
            head.W_K[:, i] = r * u_c / CONST
            head.W_Q[:, i] = r * math.cos(w * offset) * u_c / CONST
            head.W_Q[:, i + DH // 2] = -r * math.sin(w * offset) * u_c / CONST

    def content_match(head: Head, q_dirs: torch.Tensor, k_dirs: torch.Tensor) -> None:
        """Score GAP where the query's feature t equals the key's feature t (slow rotary dims)."""
        for t in range(q_dirs.shape[0]):
            head.W_Q[:, SLOW_DIMS[t]] += s * q_dirs[t]
            head.W_K[:, SLOW_DIMS[t]] += s * k_dirs[t]

    # ---------------- layer 0
    h00 = Head(D, DH, role=HEAD_ROLES["a0.h0"])
    R_hist = randn(N_INPUT, 6, g=g, scale=1.5)
    h00.W_V[:, :6] = TOK.T @ R_hist
    h00.W_O[:6] = D_hist

    h01 = Head(D, DH, role=HEAD_ROLES["a0.h1"])
    content_match(h01, content_tok, content_tok)
    h01.W_Q[:, SPARE_SLOW_DIM] = s * u_c / CONST
    h01.W_K[:, SPARE_SLOW_DIM] = s * TOK[BOS]
    h01.W_V[:, 0] = TOK[BOS]
    h01.W_O[0] = 3.0 * D_dup[0]
    h01.W_V[:, 1:6] = TOK.T @ randn(N_INPUT, 5, g=g, scale=1.5)
    h01.W_O[1:6] = D_dup[1:6]

    h02 = Head(D, DH, role=HEAD_ROLES["a0.h2"])
    positional(h02, 1)
    h02.W_V[:, :8] = code_reader
    h02.W_O[:8] = PT_raw

    h03 = Head(D, DH, role=HEAD_ROLES["a0.h3"])
    positional(h03, 2)
    h03.W_V[:, :6] = TOK.T @ randn(N_INPUT, 6, g=g, scale=1.5)
    h03.W_O[:6] = D_pp

    # m0: 16 clean-up units (circuit) + 16 distractor units
    kappa = 40.0
    W_gate0 = torch.zeros(D, INNER, dtype=torch.float64)
    W_up0 = torch.zeros(D, INNER, dtype=torch.float64)
    W_down0 = torch.zeros(INNER, D, dtype=torch.float64)
    W_gate0[:, :16] = kappa * (PT_raw.T @ codes.T) - (kappa / 2) * (u_c / CONST)[:, None]
    W_up0[:, :16] = (u_c / CONST)[:, None]
    W_down0[:16] = PT / (kappa / 2 * torch.sigmoid(torch.tensor(kappa / 2, dtype=torch.float64)))
    dist_in = lambda sc: (  # noqa: E731
        TOK.T @ randn(N_INPUT, 16, g=g, scale=sc) + D_hist.T @ randn(6, 16, g=g, scale=sc / 2)
        + D_dup.T @ randn(6, 16, g=g, scale=sc / 2) + D_pp.T @ randn(6, 16, g=g, scale=sc / 2)
        + (u_c / CONST)[:, None] * randn(1, 16, g=g, scale=sc)
    )
    W_gate0[:, 16:] = dist_in(0.5)
    W_up0[:, 16:] = dist_in(0.5)
    W_down0[16:] = randn(16, 8, g=g, scale=0.4) @ D_m0

    # ---------------- layer 1
    h10 = Head(D, DH, role=HEAD_ROLES["a1.h0"])
    content_match(h10, content_tok, PT)
    h10.W_V[:, :8] = code_reader
    h10.W_O[:8] = 2.0 * D_decoy

    h11 = Head(D, DH, role=HEAD_ROLES["a1.h1"])
    content_match(h11, content_tok, PT)
    h11.W_V[:, :16] = content_tok.T
    h11.W_O[:16] = ANS

    h12 = Head(D, DH, role=HEAD_ROLES["a1.h2"])
    positional(h12, 1)
    h12.W_V[:, :8] = D_m0.T
    h12.W_O[:8] = randn(8, 6, g=g, scale=0.3) @ D_l1

    h13 = Head(D, DH, role=HEAD_ROLES["a1.h3"])
    for k in range(6):
        h13.W_Q[:, SLOW_DIMS[k]] = 0.8 * D_hist[k]
        h13.W_K[:, SLOW_DIMS[k]] = 0.8 * (TOK.T @ R_hist)[:, k]
    h13.W_V[:, :6] = TOK.T @ randn(N_INPUT, 6, g=g, scale=1.5)
    h13.W_O[:6] = D_soft

    # m1: distractor only
    def dist_in1(sc):
        return (
            D_decoy.T @ randn(8, INNER, g=g, scale=sc) + D_l1.T @ randn(6, INNER, g=g, scale=sc / 2)
            + D_soft.T @ randn(6, INNER, g=g, scale=sc / 2) + D_m0.T @ randn(8, INNER, g=g, scale=sc / 3)
            + D_dup.T @ randn(6, INNER, g=g, scale=sc / 3) + (u_c / CONST)[:, None] * randn(1, INNER, g=g, scale=sc)
        )

    W_gate1, W_up1 = dist_in1(0.25), dist_in1(0.25)
    W_down1 = randn(INNER, 4, g=g, scale=0.3) @ AUXS

    # ---------------- embeddings and unembedding
    V = len(VOCAB)
    embed = torch.zeros(V, D, dtype=torch.float64)
    embed[:] = CONST * u_c
    embed[:N_INPUT] += TOK
    lm_head = torch.zeros(V, D, dtype=torch.float64)
    lm_head[3:19] = BETA * ANS
    lm_head[19:23] = 1.0 * AUXS + (2.0 / CONST) * u_c
    lm_head[:3] = (-8.0 / CONST) * u_c

    cfg = LlamaConfig(
        vocab_size=V, hidden_size=D, intermediate_size=INNER, num_hidden_layers=L, num_attention_heads=H,
        num_key_value_heads=H, head_dim=DH, max_position_embeddings=MAXPOS, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, hidden_act="silu", bos_token_id=BOS, eos_token_id=BOS, pad_token_id=PAD,
    )
    model = LlamaForCausalLM(cfg)
    write_llama(
        model, embed=embed, heads=[[h00, h01, h02, h03], [h10, h11, h12, h13]],
        mlps=[(W_gate0, W_up0, W_down0), (W_gate1, W_up1, W_down1)], lm_head=lm_head,
        norm_weight=CONST / math.sqrt(D),
    )
    sp.meta["positional_margin"] = margin
    return model.eval(), sp


def ground_truth_graph(sp: Space) -> Graph:
    facts = {
        "name": NAME,
        "kind": "planted ground truth",
        "description": (
            "Hand-compiled induction circuit of rope_induction: the rotary previous-token head a0.h2 writes a code "
            "of the previous token, m0's SwiGLU units clean it into a one-hot, and the induction head a1.h1 "
            "(query = current token, key = m0's one-hot, saturated) copies the token that followed the earlier "
            "occurrence. Ground truth = the edges whose patching changes logit_diff (the previous-token head's q/k "
            "read the constant direction, identical in clean and corrupted runs, so those edges do not matter)."
        ),
        "metric": "logit_diff",
        "ablation": "patching: removed edges carry the corrupted run of task.json's corruption",
        "edges": GROUND_TRUTH,
        "nodes": HEAD_ROLES,
        "residual_layout": sp.layout(),
        "const": CONST,
        "attention_gap": GAP,
        "rope_theta": ROPE_THETA,
        "positional_margin": sp.meta["positional_margin"],
        "positional_amplitudes": sp.meta["positional_amplitudes"],
    }
    return Graph.build(L, H, False, Provenance(model_type="llama", extra=facts)).with_circuit(list(GROUND_TRUTH))


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
