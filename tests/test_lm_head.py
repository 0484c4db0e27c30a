"""The chunked LM head (`sami.lm_head`) and the attention masks: equal to the unchunked / dense reference paths."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from conftest import free_port, make_tiny_model

from sami.errors import SamiInputError
from sami.lm_head import auto_chunk_size, chunked_head_logprobs, resolve_chunk_size, supports_chunked_head
from sami.logprobs import encode_examples, pack_encoded, packed_logprobs, reference_states
from sami.loss import sami_loss
from sami.models import LoraSettings, apply_lora
from sami.sami_config import SAMIConfig
from sami.trainer import SAMICollator, SAMITrainer, token_kl

TOL = dict(atol=1e-5, rtol=1e-5)  # float32
PROMPTS = [
    "Be kind and brief. Question: how do I boil an egg?",
    "Be rude. Question: how do I boil an egg?",
    "Answer like a pirate. Question: how do I boil an egg?",
    "Answer in one word. Question: how do I boil an egg?",
]
RESPONSES = [
    " Put it in boiling water for nine minutes, then cool it.",
    " Figure it out yourself.",
    " Arr, drop the egg in the pot, matey!",
    " Boil.",
]


def packed_batch(tokenizer, c: int, n_queries: int = 2) -> dict:
    prompts = [[f"{p} (query {q})" for p in PROMPTS[:c]] for q in range(n_queries)]
    responses = [[f"{r} {'Yes.' * q}" for r in RESPONSES[:c]] for q in range(n_queries)]
    return pack_encoded(encode_examples(tokenizer, prompts, responses), pad_token_id=tokenizer.pad_token_id)


def grads_of(model, fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run `fn()` -> (matrix, extra loss); return the matrix and the gradients of SAMI loss + extra."""
    model.zero_grad(set_to_none=True)
    matrix, extra = fn()
    c = matrix.shape[1]
    (sami_loss(matrix.view(-1, c, c)).loss + extra).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return matrix.detach(), grads


def assert_same(a, b):
    (ma, ga), (mb, gb) = a, b
    torch.testing.assert_close(ma, mb, **TOL)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")
    assert sum(g.abs().sum() for g in ga.values()) > 0


@pytest.mark.parametrize("c", [2, 3, 4])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_chunked_equals_unchunked(default_tokenizer, c, tied):
    model = make_tiny_model(len(default_tokenizer), seed=c, tie_word_embeddings=tied).train()
    packed = packed_batch(default_tokenizer, c)
    k = int(packed["predict_mask"].sum())
    ref = grads_of(model, lambda: (packed_logprobs(model, packed, chunk_size=0, dense_mask=True), 0.0))
    for chunk in (1, 7, k - 1, auto_chunk_size(len(default_tokenizer))):  # 7 and k - 1 do not divide K
        assert k % 7 and k % (k - 1)
        got = grads_of(model, lambda chunk=chunk: (packed_logprobs(model, packed, chunk_size=chunk), 0.0))
        assert_same(got, ref)


@pytest.mark.parametrize("c", [2, 3, 4])
def test_chunked_kl_equals_token_kl(default_tokenizer, c):
    model = make_tiny_model(len(default_tokenizer), seed=10 + c, tie_word_embeddings=False).train()
    ref_model = make_tiny_model(len(default_tokenizer), seed=20 + c, tie_word_embeddings=False)
    packed = packed_batch(default_tokenizer, c)

    def unchunked():
        matrix, logits = packed_logprobs(model, packed, return_logits=True)
        with torch.no_grad():
            _, ref_logits = packed_logprobs(ref_model, packed, return_logits=True)
        kl = token_kl(logits, ref_logits)
        assert kl > 1e-3  # two different random models
        return matrix, 0.5 * kl

    def chunked():
        matrix, kl = packed_logprobs(model, packed, chunk_size=5, reference=reference_states(ref_model, packed))
        return matrix, 0.5 * kl

    assert_same(grads_of(model, chunked), grads_of(model, unchunked))


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_lora_chunked_equals_unchunked(default_tokenizer, beta):
    """A frozen head (LoRA): the chunked head stores the gradient directions in the forward instead."""
    model = make_tiny_model(len(default_tokenizer), seed=5, tie_word_embeddings=False).train()
    model = apply_lora(model, LoraSettings(r=4, extra={"init_lora_weights": False}))  # non-zero adapter: KL > 0
    assert not model.get_base_model().lm_head.weight.requires_grad
    packed = packed_batch(default_tokenizer, 3)

    def unchunked():
        matrix, logits = packed_logprobs(model, packed, return_logits=True)
        if not beta:
            return matrix, 0.0
        with torch.no_grad(), model.disable_adapter():
            _, ref_logits = packed_logprobs(model, packed, return_logits=True)
        return matrix, beta * token_kl(logits, ref_logits)

    def chunked():
        if not beta:
            return packed_logprobs(model, packed, chunk_size=4), 0.0
        with model.disable_adapter():
            ref = reference_states(model, packed, shares_head=True)
        matrix, kl = packed_logprobs(model, packed, chunk_size=4, reference=ref)
        assert kl > 1e-4
        return matrix, beta * kl

    a, b = grads_of(model, chunked), grads_of(model, unchunked)
    assert all("lora" in n for n in a[1])
    assert_same(a, b)


@pytest.mark.parametrize("frozen", [False, True], ids=["trained-head", "frozen-head"])
def test_function_with_bias_and_kl_matches_a_direct_computation(frozen):
    """The autograd function alone, with a head bias and a KL, against log_softmax over the full logits."""
    torch.manual_seed(0)
    k, h, v = 11, 8, 50
    hidden = torch.randn(k, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=not frozen)
    bias = torch.randn(v, requires_grad=not frozen)
    ref_hidden, ref_weight, ref_bias = torch.randn(k, h), torch.randn(v, h), torch.randn(v)
    pos = torch.tensor([0, 0, 0, 1, 2, 3, 5, 5, 8, 10, 10, 4])
    ids = torch.randint(0, v, (pos.shape[0],))
    g_out, g_kl = torch.randn(pos.shape[0]), torch.randn(k)
    inputs = [hidden] + ([] if frozen else [weight, bias])

    logp = torch.log_softmax(hidden @ weight.T + bias, -1)
    ref_logp = torch.log_softmax(ref_hidden @ ref_weight.T + ref_bias, -1)
    kl = (logp.exp() * (logp - ref_logp)).sum(-1)
    direct = (logp[pos, ids], kl)
    expected = torch.autograd.grad((direct[0] * g_out).sum() + (direct[1] * g_kl).sum(), inputs)
    for chunk in (1, 3, 4, 100):
        out, got_kl = chunked_head_logprobs(
            hidden,
            weight,
            bias,
            pos,
            ids,
            chunk_size=chunk,
            ref_hidden=ref_hidden,
            ref_weight=ref_weight,
            ref_bias=ref_bias,
        )
        torch.testing.assert_close(out, direct[0], **TOL)
        torch.testing.assert_close(got_kl, direct[1], **TOL)
        grads = torch.autograd.grad((out * g_out).sum() + (got_kl * g_kl).sum(), inputs)
        for g, e in zip(grads, expected, strict=True):
            torch.testing.assert_close(g, e, **TOL)


def test_trainer_loss_and_gradients_do_not_depend_on_the_chunking(tmp_path, default_tokenizer):
    examples = [
        {"id": f"q{q}", "prompts": PROMPTS[:3], "responses": [f"{r} {q}" for r in RESPONSES[:3]]} for q in (1, 2)
    ]
    model = make_tiny_model(len(default_tokenizer), seed=8, tie_word_embeddings=False).train()
    results = []
    for chunk in (0, 3, None):
        cfg = SAMIConfig(output_dir=str(tmp_path), beta=0.2, use_cpu=True, logprob_chunk_size=chunk)
        trainer = SAMITrainer(model=model, args=cfg, processing_class=default_tokenizer)
        trainer.ref_model = make_tiny_model(len(default_tokenizer), seed=9, tie_word_embeddings=False)
        batch = SAMICollator.from_config(default_tokenizer, cfg)(examples)
        model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((loss.detach(), grads, trainer._stored_metrics["train"]["kl"][-1]))
    for loss, grads, kl in results[1:]:
        torch.testing.assert_close(loss, results[0][0], **TOL)
        assert kl == pytest.approx(results[0][2], rel=1e-5) and kl > 1e-3
        for name in grads:
            torch.testing.assert_close(grads[name], results[0][1][name], **TOL)


def test_chunk_size_settings(tmp_path):
    assert auto_chunk_size(49_152) == 170 and auto_chunk_size(131_072) == 64 and auto_chunk_size(10) == 1024
    # automatic: unchunked while the kept logits are small (<= 2**26 elements), chunked above
    assert resolve_chunk_size(None, 49_152, n_positions=1_000) == 0
    assert resolve_chunk_size(None, 131_072, n_positions=1_400) == 64 and resolve_chunk_size(None, 8, None) == 1024
    assert resolve_chunk_size(0, 131_072, 10**6) == 0 and resolve_chunk_size(5, 10, 1) == 5
    with pytest.raises(SamiInputError, match="logprob_chunk_size"):
        SAMIConfig(output_dir=str(tmp_path), logprob_chunk_size=-1)


def test_models_that_change_logits_after_the_head_use_the_unchunked_path(default_tokenizer):
    model = make_tiny_model(len(default_tokenizer), seed=1)
    assert supports_chunked_head(model)
    model.config.final_logit_softcapping = 30.0
    assert not supports_chunked_head(model)
    packed = packed_batch(default_tokenizer, 2)
    with torch.no_grad():  # still works: falls back to the model's own logits
        torch.testing.assert_close(packed_logprobs(model, packed), packed_logprobs(model, packed, chunk_size=0))


# ---------------------------------------------------------------- attention masks


def test_boolean_sdpa_mask_and_eager_equal_the_dense_mask(default_tokenizer):
    from sami.prefix_packing import attention_mask_for

    model = make_tiny_model(len(default_tokenizer), seed=2, tie_word_embeddings=False).train()
    packed = packed_batch(default_tokenizer, 4)
    mask = attention_mask_for(model, packed["segment_ids"])
    assert mask.dtype == torch.bool and mask.shape[1] == 1  # no float copy of the [R, 1, L, L] mask
    ref = grads_of(model, lambda: (packed_logprobs(model, packed, chunk_size=0, dense_mask=True), 0.0))
    assert_same(grads_of(model, lambda: (packed_logprobs(model, packed), 0.0)), ref)
    model.config._attn_implementation = "eager"
    assert attention_mask_for(model, packed["segment_ids"]).dtype == torch.float32
    assert_same(grads_of(model, lambda: (packed_logprobs(model, packed), 0.0)), ref)


@pytest.mark.slow
def test_flex_attention_block_mask_equals_the_dense_mask(default_tokenizer):
    """FlexAttention runs on the CPU in torch 2.13 for the forward only (it compiles: about 80 s on 2 cores);
    its backward is GPU-only there, so gradients are compared by benchmarks/gpu_check.py on a GPU."""
    from torch.nn.attention.flex_attention import BlockMask

    from sami.prefix_packing import attention_mask_for

    model = make_tiny_model(len(default_tokenizer), seed=2)
    packed = packed_batch(default_tokenizer, 3)
    with torch.no_grad():
        dense = packed_logprobs(model, packed, dense_mask=True)
        model.config._attn_implementation = "flex_attention"
        assert isinstance(attention_mask_for(model, packed["segment_ids"]), BlockMask)
        try:
            flex = packed_logprobs(model, packed)
        except (NotImplementedError, RuntimeError) as e:  # e.g. no C++ compiler for inductor
            pytest.skip(f"FlexAttention does not run on this CPU: {str(e).splitlines()[0][:200]}")
    torch.testing.assert_close(flex, dense, **TOL)


# ---------------------------------------------------------------- wrappers: DDP and FSDP2 (2 CPU processes, gloo)


@contextmanager
def _gloo_rank(rank: int, world: int, port: int, results):
    """One rank of a 2-process gloo group: `results[rank]` is "ok" when the block passes, else the error."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        yield
        results[rank] = "ok"
    except Exception as e:  # reported by the parent
        results[rank] = f"{type(e).__name__}: {e}"
        raise
    finally:
        dist.destroy_process_group()


def _spawn_two(worker, *args) -> None:
    """`worker(rank, 2, port, *args, results)` on 2 CPU processes; both ranks must report "ok"."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(2, free_port(), *args, results), nprocs=2, join=True)
        assert dict(results) == {0: "ok", 1: "ok"}


def _wrapped_worker(rank: int, world: int, port: int, wrapper: str, vocab: int, results) -> None:
    from transformers import AutoTokenizer  # noqa: F401  (import before the process group, as the Trainer does)

    from sami.models import default_model_path, load_tokenizer

    with _gloo_rank(rank, world, port, results):
        tokenizer = load_tokenizer(default_model_path())
        torch.manual_seed(0)
        grads = {}
        for chunk in (0, 3):
            model = make_tiny_model(vocab, seed=11, tie_word_embeddings=False).train()
            if wrapper == "ddp":
                # find_unused_parameters=True is what the Trainer passes for a transformers model by default
                wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
            else:
                from torch.distributed.fsdp import fully_shard

                for layer in model.model.layers:
                    fully_shard(layer)
                wrapped = fully_shard(model)
            packed = packed_batch(tokenizer, 2 + rank, n_queries=1)  # a different C on each rank
            matrix = packed_logprobs(wrapped, packed, chunk_size=chunk)
            sami_loss(matrix.view(1, 2 + rank, 2 + rank)).loss.backward()
            out = {}
            for name, p in model.named_parameters():
                g = p.grad
                out[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
            grads[chunk] = out
        for name in grads[0]:
            torch.testing.assert_close(grads[3][name], grads[0][name], **TOL, msg=lambda m, n=name: f"{n}: {m}")
        assert grads[3]["lm_head.weight"].abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
def test_chunked_head_under_ddp_and_fsdp2_equals_unchunked(default_tokenizer, wrapper):
    """The chunked head runs inside the wrapped model's forward: DDP's unused-parameter search finds the
    (untied) head weight, FSDP2 gathers it for the forward and again for the recomputing backward."""
    _spawn_two(_wrapped_worker, wrapper, len(default_tokenizer))


def _accelerate_fsdp2_worker(rank: int, world: int, port: int, vocab: int, tied: bool, results) -> None:
    """FSDP2 wrapped as accelerate's `fsdp2_prepare_model` does: each decoder layer, the input embedding (untied),
    the tail `[final norm, lm_head]` (with the embedding when tied) as one unit without resharding, then the root.
    The chunked head must be taken and give the gradients of the unsharded model on both ranks' batches."""
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from torch.distributed.tensor import DTensor

    from sami.logprobs import head_chunk_size
    from sami.models import default_model_path, load_tokenizer

    with _gloo_rank(rank, world, port, results):
        tokenizer = load_tokenizer(default_model_path())
        batches = [packed_batch(tokenizer, 2 + r, n_queries=1) for r in range(world)]  # a different C per rank
        reference = make_tiny_model(vocab, seed=11, tie_word_embeddings=tied).train()
        ref_loss = sum(
            sami_loss(packed_logprobs(reference, b, chunk_size=0).view(1, 2 + r, 2 + r)).loss
            for r, b in enumerate(batches)
        )
        (ref_loss / world).backward()  # FSDP averages the ranks' gradients
        expected = {n: p.grad.detach().clone() for n, p in reference.named_parameters() if p.grad is not None}

        model = make_tiny_model(vocab, seed=11, tie_word_embeddings=tied).train()
        for layer in model.model.layers:
            fully_shard(layer)
        embed, head = model.get_input_embeddings(), model.get_output_embeddings()
        if not tied:
            fully_shard(embed)
        fully_shard([model.model.norm, *([embed] if tied else []), head], reshard_after_forward=False)
        wrapped = fully_shard(model)
        assert isinstance(head, FSDPModule) and isinstance(head.weight, DTensor)  # sharded and hooked
        assert head._forward_pre_hooks or head._forward_hooks
        assert head_chunk_size(wrapped, batches[rank], 3) == 3  # the chunked path is taken
        matrix = packed_logprobs(wrapped, batches[rank], chunk_size=3)
        sami_loss(matrix.view(1, 2 + rank, 2 + rank)).loss.backward()
        for name, p in model.named_parameters():
            got = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            torch.testing.assert_close(got, expected[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")
        assert expected["lm_head.weight" if not tied else "model.embed_tokens.weight"].abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_chunked_head_recognised_under_accelerates_fsdp2_wrapping(default_tokenizer, tied):
    _spawn_two(_accelerate_fsdp2_worker, len(default_tokenizer), tied)


def test_foreign_hooks_on_the_head_still_turn_the_chunked_head_off(default_tokenizer):
    model = make_tiny_model(len(default_tokenizer), seed=0, tie_word_embeddings=False)
    assert supports_chunked_head(model)
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: o * 2)
    assert not supports_chunked_head(model)
    handle.remove()
