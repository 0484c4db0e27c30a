"""Prefix-shared log-prob matrices against the naive per-pair computation (one padded row per pair)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model

from sami.constitutions import bundled_constitution_path
from sami.data import bundled_queries_path
from sami.errors import SamiInputError
from sami.logprobs import batched_logprob_matrices, encode_examples, logprob_matrix
from sami.loss import sami_loss
from sami.prefix_packing import pack_prefix_shared, prefix_attention_mask

PROMPTS = [
    "Follow these principles:\n1. Be concise.\n\nPOST: My landlord keeps the deposit.\n\nTL;DR:",
    "Follow these principles:\n1. Be long-winded, repeat yourself and add many details nobody asked for.\n\n"
    "POST: My landlord keeps the deposit.\n\nTL;DR:",
    "Hi",
]
RESPONSES = [
    " Landlord kept my deposit.",
    " The landlord, who is the person renting out the flat, keeps the deposit, which is money, and will not "
    "give it back, as far as I can tell.",
    " ok",
]


def naive_logprob_matrix(model, tokenizer, prompts, responses, *, include_eos=True):
    """(sums, means) [P, R]: one right-padded sequence per pair, logits over the whole vocabulary, float64."""
    eos = [tokenizer.eos_token_id] if include_eos else []
    pairs = []
    for p in prompts:
        p_ids = tokenizer(p).input_ids
        for r in responses:
            pairs.append((p_ids, tokenizer(r, add_special_tokens=False).input_ids + eos))
    width = max(len(a) + len(b) for a, b in pairs)
    input_ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for k, (a, b) in enumerate(pairs):
        input_ids[k, : len(a) + len(b)] = torch.tensor(a + b)
        attention_mask[k, : len(a) + len(b)] = 1
    logps = torch.log_softmax(model(input_ids=input_ids, attention_mask=attention_mask).logits.double(), dim=-1)
    sums = []
    for k, (a, b) in enumerate(pairs):
        predicted = logps[k, len(a) - 1 : len(a) + len(b) - 1]
        sums.append(predicted.gather(-1, torch.tensor(b)[:, None]).sum())
    counts = torch.tensor([len(b) for _, b in pairs], dtype=torch.float64)
    sums = torch.stack(sums)
    shape = (len(prompts), len(responses))
    return sums.view(shape), (sums / counts).view(shape)


def check_against_naive(model, tokenizer, prompts, responses, eos_options=(True, False), atol=1e-4):
    with torch.no_grad():
        for eos in eos_options:
            sums, means = naive_logprob_matrix(model, tokenizer, prompts, responses, include_eos=eos)
            for normalize, expected in (("sum", sums), ("mean", means)):
                got = logprob_matrix(model, tokenizer, prompts, responses, normalize=normalize, include_eos=eos)
                assert got.shape == expected.shape
                assert got.dtype == torch.float32
                torch.testing.assert_close(got.double(), expected, atol=atol, rtol=0)
    # The responses really differ, and each row really depends on its prompt.
    assert sums.std() > 1.0


def test_tiny_model_matches_naive(tiny_model, default_tokenizer):
    check_against_naive(tiny_model, default_tokenizer, PROMPTS, RESPONSES)


def test_rectangular_matrix_matches_naive(tiny_model, default_tokenizer):
    check_against_naive(tiny_model, default_tokenizer, PROMPTS[:2], RESPONSES)
    check_against_naive(tiny_model, default_tokenizer, PROMPTS, RESPONSES[1:])


def test_batched_matrices_match_naive_per_query(tiny_model, default_tokenizer):
    # eos="always": EOS on every response, as the naive reference does (the default, "generated", scores EOS only
    # where the model ended with it; these responses carry no such record).
    queries = [(PROMPTS, RESPONSES), (PROMPTS[1:][::-1] + ["Be rude."], [" no", " fine.", " Hello there, friend."])]
    got = batched_logprob_matrices(
        tiny_model, default_tokenizer, [q[0] for q in queries], [q[1] for q in queries], normalize="sum", eos="always"
    )
    assert got.shape == (2, 3, 3)
    with torch.no_grad():
        for b, (p, r) in enumerate(queries):
            sums, _ = naive_logprob_matrix(tiny_model, default_tokenizer, p, r)
            torch.testing.assert_close(got[b].detach().double(), sums, atol=1e-4, rtol=0)


def test_gradients_match_naive(tiny_model, default_tokenizer):
    params = [p for p in tiny_model.parameters()]
    got = sami_loss(logprob_matrix(tiny_model, default_tokenizer, PROMPTS, RESPONSES, eos="always")).loss
    grads = torch.autograd.grad(got, params)
    _, means = naive_logprob_matrix(tiny_model, default_tokenizer, PROMPTS, RESPONSES)
    expected = torch.autograd.grad(sami_loss(means).loss, params)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e.float(), atol=1e-5, rtol=1e-3)
    assert sum(g.abs().sum() for g in grads) > 0


def test_peft_wrapped_model_matches_naive(default_tokenizer):
    from sami.models import LoraSettings, apply_lora

    model = apply_lora(
        make_tiny_model(len(default_tokenizer), seed=3), LoraSettings(r=4, extra={"init_lora_weights": False})
    )
    check_against_naive(model, default_tokenizer, PROMPTS[:2], RESPONSES[:2])
    with model.disable_adapter(), torch.no_grad():  # the adapter does change the result
        base = logprob_matrix(model, default_tokenizer, PROMPTS[:2], RESPONSES[:2])
    assert (base - logprob_matrix(model, default_tokenizer, PROMPTS[:2], RESPONSES[:2])).abs().max() > 1e-3


def test_bf16_model_gives_float32_close_to_fp32(default_tokenizer):
    model = make_tiny_model(len(default_tokenizer), seed=4)
    with torch.no_grad():
        fp32 = logprob_matrix(model, default_tokenizer, PROMPTS, RESPONSES)
        bf16 = logprob_matrix(model.to(torch.bfloat16), default_tokenizer, PROMPTS, RESPONSES)
    assert bf16.dtype == torch.float32
    assert torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0)


def test_packing_layout():
    packed = pack_prefix_shared([[5, 6, 7], [8]], [[[1, 2], [3]]], [0, 0], pad_token_id=0)
    # Prompts are left-padded so that the responses start in the same column.
    assert packed["input_ids"].tolist() == [[5, 6, 7, 1, 2, 3], [0, 0, 8, 1, 2, 3]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3], [0, 0, 0, 1, 2, 1]]
    assert packed["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 2], [-1, -1, 0, 1, 1, 2]]
    # Logits are kept for the last 4 columns; the last prompt token and a response token followed by one of its
    # own response predict something.
    assert packed["n_logits"] == 4
    assert packed["predict_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]
    assert packed["target_ids"].tolist() == [1, 2, 3, 1, 2, 3]
    assert packed["target_index"].tolist() == [0, 1, 0, 4, 5, 4]
    assert packed["target_pair"].tolist() == [0, 0, 1, 2, 2, 3]
    assert packed["num_tokens"] == 10
    allowed = prefix_attention_mask(packed["segment_ids"], torch.float32)[:, 0] == 0
    # Response 2 sees the prompt and itself, not response 1; response 1 does not see response 2.
    assert allowed[0, 5].tolist() == [True, True, True, False, False, True]
    assert allowed[0, 4].tolist() == [True, True, True, True, True, False]
    assert allowed[1, 2].tolist() == [False, False, True, False, False, False]  # the prompt ignores padding
    assert allowed[1, 3].tolist() == [False, False, True, True, False, False]
    assert allowed.diagonal(dim1=-2, dim2=-1).all()  # no fully masked row, padding included


@pytest.mark.parametrize(
    ("prompts", "responses", "kwargs", "message"),
    [
        ([["a"]], [["b"]], {}, "example q0: needs at least 2 constitutions, got C=1"),
        ([["a", "b"]], [["c"]], {}, "example q0: 2 prompts but 1 responses"),
        ([["a", "b"]], [["c", "  "]], {}, "example q0: response 1 is empty"),
        ([["a", "b"]], [["c", "one two three four five"]], {"max_response_length": 3}, "example q0: response 1 has"),
        ([["a", "b c d e f"]], [["c", "d"]], {"max_prompt_length": 3}, "example q0: prompt 1 has 5 tokens"),
        ([["a", "b"]], ["cd"], {}, "example q0: 'responses' must be a list of strings"),
    ],
)
def test_bad_input_names_the_example(default_tokenizer, prompts, responses, kwargs, message):
    with pytest.raises(SamiInputError, match=message.replace("(", r"\(")):
        encode_examples(default_tokenizer, prompts, responses, ids=["q0"], **kwargs)


def test_batch_with_different_c_names_the_example(tiny_model, default_tokenizer):
    with pytest.raises(SamiInputError, match="example b: C=3"):
        batched_logprob_matrices(
            tiny_model, default_tokenizer, [["p", "q"], ["p", "q", "r"]], [["x", "y"], ["x", "y", "z"]], ids=["a", "b"]
        )


def test_prompts_are_cut_from_the_left_only_when_asked(default_tokenizer):
    long_prompt = "one two three four five six"
    full = default_tokenizer(long_prompt).input_ids
    enc = encode_examples(
        default_tokenizer,
        [[long_prompt, "a"]],
        [["x", "y"]],
        max_prompt_length=3,
        truncate_prompt_left=True,
        max_response_length=5,
        eos="always",
    )
    assert enc.prompt_ids[0][0] == full[-3:]
    assert enc.n_truncated_prompts == 1
    # The response is written after the (whole) prompt: " x", with the space the model writes there.
    assert enc.response_ids[0][0] == default_tokenizer(" x", add_special_tokens=False).input_ids + [2]


def test_token_convention(default_tokenizer):
    """A stored (left-stripped) response is tokenized as the model wrote it after its prompt (issue 15: this used
    to assert the ids of "ok." tokenized alone, which byte-level BPE never generates after "Summary:")."""
    enc = encode_examples(default_tokenizer, [["Summary:", "b\n"]], [["ok.", "y"]], include_eos=False)
    assert enc.prompt_ids[0][0] == default_tokenizer("Summary:").input_ids
    assert enc.response_ids[0][0] == default_tokenizer(" ok.", add_special_tokens=False).input_ids  # ĠOK
    assert enc.response_ids[0][0] != default_tokenizer("ok.", add_special_tokens=False).input_ids
    assert enc.response_ids[0][1] == default_tokenizer("y", add_special_tokens=False).input_ids  # after "\n": none


def real_examples(n_queries=1):
    """Short real examples: TL;DR post openings and HH queries under the paper's constitutions."""
    tldr = json.loads(bundled_constitution_path("tldr_opus").read_text())["principles"]
    hh = json.loads(bundled_constitution_path("hh_opus").read_text())["principles"]
    post = json.loads(bundled_queries_path("tldr_validation").open().readline())["query"][:300]
    query = json.loads(bundled_queries_path("hh_helpful_train").open().readline())["query"]
    prompts_tldr = [
        f"Summarize the post. Principle: {tldr[0]['principle']}\n\nPOST: {post}\n\nTL;DR:",
        f"Summarize the post. Principle: {tldr[0]['antithesis']}\n\nPOST: {post}\n\nTL;DR:",
    ]
    prompts_hh = [
        f"Principle: {hh[0]['principle']}\n\nHuman: {query}\n\nAssistant:",
        f"Principle: {hh[0]['antithesis']}\n\nHuman: {query}\n\nAssistant:",
    ]
    return [
        (prompts_tldr, [" I am newly single and do not know how to date.", " The post is about dating."]),
        (prompts_hh, [" Sure! Stand 40 feet from the stake and toss the shoe.", " No."]),
    ]


@pytest.fixture(scope="module")
def real_naive(default_model, default_tokenizer):
    """The real examples and their naive matrices, keyed by (example index, include_eos)."""
    examples = real_examples()
    with torch.no_grad():
        naive = {
            (b, eos): naive_logprob_matrix(default_model, default_tokenizer, *examples[b], include_eos=eos)
            for b, eos in ((0, True), (1, True), (1, False))
        }
    return examples, naive


@pytest.mark.slow
def test_default_model_matches_naive_on_real_examples(default_model, default_tokenizer, real_naive):
    examples, naive = real_naive
    with torch.no_grad():
        for b, eos in naive:
            if (b, eos) == (1, True):
                continue  # used by the batched test below
            prompts, responses = examples[b]
            sums, means = naive[b, eos]
            for normalize, expected in (("sum", sums), ("mean", means)):
                got = logprob_matrix(
                    default_model, default_tokenizer, prompts, responses, normalize=normalize, include_eos=eos
                )
                torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=0)
    assert not torch.allclose(naive[1, True][0], naive[1, False][0])  # the EOS token is really scored


@pytest.mark.slow
def test_default_model_batched_on_real_examples(default_model, default_tokenizer, real_naive):
    examples, naive = real_naive
    with torch.no_grad():
        got = batched_logprob_matrices(
            default_model,
            default_tokenizer,
            [e[0] for e in examples],
            [e[1] for e in examples],
            normalize="mean",
            eos="always",
        )
    for b in range(2):
        torch.testing.assert_close(got[b].double(), naive[b, True][1], atol=1e-4, rtol=0)
    assert torch.isfinite(got).all() and (got < 0).all()


class WordTokenizer:
    """One id per word (its length + 10) and a BOS id 1 in front of prompts, as many tokenizers do."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 2

    def __call__(self, texts, add_special_tokens=True):
        class Out:
            input_ids = [([1] if add_special_tokens else []) + [len(w) + 10 for w in t.split()] for t in texts]

        return Out()


def test_left_truncation_keeps_the_bos_token():
    enc = encode_examples(
        WordTokenizer(),
        [["a bb ccc dddd", "x"]],
        [["y", "z"]],
        max_prompt_length=3,
        truncate_prompt_left=True,
        eos="always",
    )
    assert enc.prompt_ids[0] == [[1, 13, 14], [1, 11]]
    assert enc.response_ids[0] == [[11, 2], [11, 2]]
    assert enc.n_truncated_prompts == 1
