"""Issue 15: the ids scored for a self-generated response are the ids the model generated, with one BOS, and EOS
only where the model ended. Byte-level BPE (the real default model) and SentencePiece (a Unigram tokenizer built
here with the `tokenizers` library), base and chat styles."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_model

from sami.constitutions import load_constitutions
from sami.data import QuerySource, load_queries
from sami.filters import FilterSettings
from sami.generation.hf import HFGenerator
from sami.io import read_jsonl
from sami.logprobs import encode_examples, logprob_matrix, tokenize_responses
from sami.prompts import get_template, render_prompt
from sami.sami_config import SAMIConfig
from sami.sampling import SamplingSettings, generate_samples
from sami.tokens import encode_prompts, resolve_eos, written_separator
from sami.trainer import SAMICollator, load_samples

# Every piece is a 3-letter word with or without the word-start mark "▁" (plus "▁a", the decoder's anchor), so
# any text the tiny random model writes has exactly one segmentation: re-tokenizing it can only give its own ids
# back if the boundary is right.
SP_WORDS = "the cat sat dog ran big red sun hat can you say yes not now how are usr bot".split()
UNK, BOS, EOS = 0, 1, 2


def sp_tokenizer():
    """A SentencePiece-style (Unigram + Metaspace) tokenizer that adds BOS, with a chat template holding BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("▁a", -2.0)]
    pieces += [(f"▁{w}", -3.0) for w in SP_WORDS] + [(w, -4.0) for w in SP_WORDS]
    backend = Tokenizer(models.Unigram(pieces, unk_id=UNK, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    tok.chat_template = "{{ bos_token }}{% for m in messages %}usr {{ m['content'] }} bot{% endfor %}"
    return tok


def never_writes(model, ids: list[int]):
    """The model with the logits of `ids` pushed to -1e4 (in generation and scoring alike)."""
    index = torch.tensor(ids)

    def hook(module, inputs, output):
        return output.index_fill(-1, index.to(output.device), -1e4)

    model.lm_head.register_forward_hook(hook)
    return model


def kept_whole(c, sep: str, response: str) -> bool:
    """The stored response is the whole generation: not cut at a stop string, no trailing whitespace stripped."""
    return (c.ended_with_eos or c.finish_reason == "length") and sep + response == c.text


def check_scored_as_generated(model, tok, texts, completions, *, separators, responses, min_whole, atol=1e-4):
    """For each completion kept whole: the scored ids are the generated ids (+ EOS where the model ended) and the
    scored log-prob under the generation prompt is the generation-time one (within `atol` nats)."""
    whole = 0
    for text, c, sep, response in zip(texts, completions, separators, responses, strict=True):
        if not response or not kept_whole(c, sep, response):
            continue
        whole += 1
        generated = c.token_ids + ([tok.eos_token_id] if c.ended_with_eos else [])
        scored = tokenize_responses(
            tok, [response], prompts=[text], separators=[sep], ended_with_eos=[c.ended_with_eos]
        )
        assert scored[0] == generated, (text, c.text)
        with torch.no_grad():
            lp = logprob_matrix(
                model, tok, [text], [response], normalize="sum", separators=[sep], ended_with_eos=[c.ended_with_eos]
            )
        assert abs(float(lp[0, 0]) - c.logprob) < atol, (text, c.text, float(lp[0, 0]), c.logprob)
    assert whole >= min_whole


@pytest.mark.parametrize("style", ["base", "chat"])
def test_sentencepiece_scores_the_generated_ids(style):
    tok = sp_tokenizer()
    model = never_writes(make_tiny_model(len(tok), seed=1, tie_word_embeddings=False), [UNK, BOS])
    gen = HFGenerator(model, tok, batch_size=4, logprobs=True)
    queries = ["how are you", "the cat sat", "say yes now", "can you say", "big red sun", "not now dog"]
    prompts = (
        [f"usr {q} bot" for q in queries] if style == "base" else [[{"role": "user", "content": q}] for q in queries]
    )
    texts = [render_prompt(p, tok) for p in prompts]
    outs = gen.generate(prompts, max_new_tokens=12, temperature=1.0, seed=1)  # sampled: varied first pieces
    assert any(c.ended_with_eos for c in outs) and not all(c.ended_with_eos for c in outs)
    separators = [written_separator(c.text) for c in outs]
    # Both boundaries occur: a word-start piece ("▁cat": separator " ") and a continuation piece ("cat": "").
    firsts = [tok.convert_ids_to_tokens(c.token_ids[0]) for c in outs if c.token_ids]
    assert any(f.startswith("▁") for f in firsts) and any(not f.startswith("▁") for f in firsts), firsts
    for prompt, text in zip(prompts, texts, strict=True):
        assert encode_prompts(tok, [text])[0] == gen.encode(prompt)
        assert encode_prompts(tok, [text])[0].count(BOS) == 1
    check_scored_as_generated(
        model, tok, texts, outs, separators=separators, responses=[c.text.strip() for c in outs], min_whole=4
    )


def test_chat_template_with_bos_scores_one_bos():
    tok = sp_tokenizer()
    model = make_tiny_model(len(tok), seed=2)
    texts = [render_prompt([{"role": "user", "content": q}], tok) for q in ("how are you", "say yes now")]
    assert texts[0].startswith("<s>") and tok(texts[0]).input_ids.count(BOS) == 2  # the old double BOS
    collator = SAMICollator(tok)
    batch = collator([{"id": "q0", "prompts": texts, "responses": ["yes", "not now"]}])
    for row in batch["input_ids"].tolist():
        assert row.count(BOS) == 1
    enc = encode_examples(tok, [texts], [["yes", "not now"]])
    assert enc.prompt_ids[0] == [
        HFGenerator(model, tok).encode([{"role": "user", "content": "how are you"}]),
        enc.prompt_ids[0][1],
    ]
    assert enc.response_ids[0] == [
        tok("yes", add_special_tokens=False).input_ids,
        tok("not now", add_special_tokens=False).input_ids,
    ]


def test_eos_policy_and_include_eos_mapping():
    assert resolve_eos() == "generated"
    assert resolve_eos(include_eos=True) == "always" and resolve_eos(include_eos=False) == "never"
    assert SAMIConfig(output_dir="/tmp/x", include_eos=False).eos == "never"
    assert SAMIConfig(output_dir="/tmp/x").eos == "generated"
    with pytest.raises(Exception, match="contradicts"):
        resolve_eos("never", include_eos=True)
    tok = sp_tokenizer()
    for eos, ended, expected in (
        ("generated", [True, False], [[EOS], []]),
        ("generated", None, [[], []]),
        ("always", [True, False], [[EOS], [EOS]]),
        ("never", [True, False], [[], []]),
    ):
        enc = encode_examples(tok, [["usr how bot", "usr are bot"]], [["yes", "not"]], eos=eos, ended_with_eos=[ended])
        assert [r[1:] for r in enc.response_ids[0]] == expected, eos


def test_prompt_that_ends_mid_token_scores_the_continuation_alone(default_tokenizer, caplog):
    # "Assistant: " + "Sure" tokenizes as ..., ":", "ĠSure": the prompt's own last token "Ġ" is not a prefix. The
    # model wrote its response after "Ġ", so it wrote "Sure" (not "ĠSure"), and a warning names the example.
    tok = default_tokenizer
    enc = encode_examples(tok, [["Assistant: ", "b"]], [["Sure", "x"]], separators=[["", None]], ids=["q7"])
    assert enc.response_ids[0][0] == tok("Sure", add_special_tokens=False).input_ids
    assert "example q7: response 0: the prompt's last token merges with the response" in caplog.text


# ---- the real default model (byte-level BPE) through the sampler and the trainer's collator ---------------------
class RecordingGenerator:
    """An hf generator that keeps each completion by its prompt's text."""

    def __init__(self, inner: HFGenerator):
        self.inner, self.tokenizer, self.by_text = inner, inner.tokenizer, {}

    def generate(self, prompts, **kwargs):
        outs = self.inner.generate(prompts, **kwargs)
        for p, c in zip(prompts, outs, strict=True):
            self.by_text[render_prompt(p, self.tokenizer)] = c
        return outs


def self_generated(model, tok, tmp_path, style, *, n_queries=4, max_new_tokens=16, stop=None):
    template = get_template("dialogue", style, **({"stop": stop} if stop is not None else {}))
    gen = RecordingGenerator(HFGenerator(model, tok, batch_size=8, logprobs=True))
    queries = load_queries(QuerySource(bundled="hh_helpful_test", limit=n_queries))
    keep_all = FilterSettings(leftovers=[], refusal_prefixes=[], drop_identical=False)
    path = tmp_path / f"samples-{style}.jsonl"
    generate_samples(
        gen, queries, load_constitutions("hh_opus"), path, SamplingSettings(max_new_tokens=max_new_tokens),
        template=template, filters=keep_all, progress=False,
    )  # fmt: skip
    return template, gen, list(read_jsonl(path)), path


@pytest.fixture(scope="module")
def default_model_fp64(default_model):
    """The default model in float64: generation and scoring agree to well below 1e-4 nats, so what remains is the
    boundary rule, not float32 summation order."""
    return copy.deepcopy(default_model).double()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("style", ["base", "chat"])
def test_default_model_samples_score_the_generated_ids(request, default_tokenizer, tmp_path, style, dtype):
    tok = default_tokenizer
    default_model = request.getfixturevalue("default_model" if dtype == "float32" else "default_model_fp64")
    template, gen, records, path = self_generated(default_model, tok, tmp_path, style)
    assert len(records) == 4
    collator = SAMICollator(tok)  # eos="generated"
    texts, outs, seps, responses = [], [], [], []
    for ex, rec in zip(load_samples(path), records, strict=True):
        enc = collator.encode([ex])
        for j, c in enumerate(rec["constitutions"]):
            from sami.constitutions import Constitution

            gen_text = render_prompt(template.generation_prompt(Constitution.from_dict(c), rec["query"]), tok)
            out = gen.by_text[gen_text]
            sep, response = rec["meta"]["separators"][j], rec["responses"][j]
            assert rec["meta"]["ended_with_eos"][j] == out.ended_with_eos
            if kept_whole(out, sep, response):  # the trainer scores, after the training prompt, the generated ids
                assert enc.response_ids[0][j] == out.token_ids + ([tok.eos_token_id] if out.ended_with_eos else [])
            texts.append(gen_text)
            outs.append(out)
            seps.append(sep)
            responses.append(response)
    if style == "base":
        assert seps.count(" ") > len(seps) // 2  # mostly ĠSure-like first tokens after "Assistant:"
    # Most base answers are cut at a stop string (no whole-generation reference): 2 of 8 are kept whole here.
    # In float64 the scored log-prob is the generation-time one to 1e-4 nats. In float32, 1e-3: the hf generator's
    # KV-cached log-probs differ from one plain full forward of the same ids by ~3e-4 nats over 16 tokens after the
    # ~400-token base prompt (summation order; batch size 1 too). The ids are compared exactly above in both.
    check_scored_as_generated(
        default_model, tok, texts, outs, separators=seps, responses=responses, min_whole=2,
        atol=1e-4 if dtype == "float64" else 1e-3,
    )  # fmt: skip


@pytest.mark.slow
def test_default_model_stop_string_cut_gets_no_eos(default_model, default_tokenizer, tmp_path):
    tok = default_tokenizer
    _, gen, records, _ = self_generated(default_model, tok, tmp_path, "base", n_queries=2)
    # A word the model writes in its first answer becomes a stop string: that answer is cut there.
    first = next(iter(gen.by_text.values()))
    word = first.text.split()[1]
    _, gen, records, path = self_generated(
        default_model, tok, tmp_path / "cut", "base", n_queries=2, stop=[" " + word]
    )
    cut = [c for c in gen.by_text.values() if c.finish_reason == "stop" and not c.ended_with_eos]
    assert cut
    ended = [e for rec in records for e in rec["meta"]["ended_with_eos"]]
    assert False in ended and None not in ended
    for eos, expect_eos in (("generated", None), ("always", True), ("never", False)):
        collator = SAMICollator(tok, eos=eos)
        for ex, rec in zip(load_samples(path), records, strict=True):
            enc = collator.encode([ex])
            for ids, e in zip(enc.response_ids[0], rec["meta"]["ended_with_eos"], strict=True):
                has_eos = ids[-1] == tok.eos_token_id
                assert has_eos == (e if expect_eos is None else expect_eos)


def test_servers_tell_eos_from_stop_strings():
    """OpenAI-compatible servers and vLLM say "stop" for both; ended_with_eos tells them apart where they can."""
    from types import SimpleNamespace

    from sami.generation.openai_backend import _ended_with_eos
    from sami.generation.vllm_backend import _completion

    def choice(finish, **extra):
        return SimpleNamespace(finish_reason=finish, model_extra=extra)

    assert _ended_with_eos(choice("stop"), False, []) is True  # no stop strings: only EOS stops
    assert _ended_with_eos(choice("stop"), True, ["\n"]) is False  # we cut a stop string ourselves
    assert _ended_with_eos(choice("length"), False, []) is False
    assert _ended_with_eos(choice("stop"), False, ["\n"]) is None  # the server cut something, or EOS: unknown
    assert _ended_with_eos(choice("stop", stop_reason=None), False, ["\n"]) is True  # vLLM server: EOS
    assert _ended_with_eos(choice("stop", stop_reason="\n"), False, ["\n"]) is False
    assert _ended_with_eos(choice("stop", stop_type="eos"), False, ["\n"]) is True  # llama.cpp server
    assert _ended_with_eos(choice("stop", stop_type="word"), False, ["\n"]) is False

    def vllm_out(finish, stop_reason, text="Sure."):
        return SimpleNamespace(
            outputs=[SimpleNamespace(text=text, token_ids=[1, 2], finish_reason=finish, stop_reason=stop_reason)]
        )

    assert _completion(vllm_out("stop", None), ["Human:"]).ended_with_eos is True
    assert _completion(vllm_out("stop", "Human:"), ["Human:"]).ended_with_eos is False
    assert _completion(vllm_out("length", None), ["Human:"]).ended_with_eos is False
