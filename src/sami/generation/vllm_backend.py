"""Generation with vLLM's offline engine (`pip install 'sami[vllm]'`, needs a GPU).

`vllm.LLM(model, tensor_parallel_size=..., dtype=..., gpu_memory_utilization=..., seed=...)` holds the model;
plain-text prompts go through `LLM.generate`, chat messages through `LLM.chat` (the model's chat template).
vLLM is imported only when this backend is built, so the rest of sami works without it.

Prefix caching (`enable_prefix_caching`) is on by default: self-generation prompts of one constitution share its
text, so their KV blocks are computed once. `generation.engine_kwargs: {enable_prefix_caching: false}` turns it off.
`benchmarks/vllm_check.py` compares this backend's greedy output and speed with the `hf` backend's.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from sami.errors import SamiInputError
from sami.generation.base import Completion, GenerationSettings, Prompt, check_request, cut_at_stop, prompt_seeds
from sami.models import resolve_model_path

INSTALL_HINT = "the vllm backend needs vLLM: pip install 'sami[vllm]' (Linux with a CUDA GPU)"


def import_vllm():
    """The `vllm` module, or a `SamiInputError` that says how to install it."""
    try:
        # optional extra sami[vllm] (GPU): a clear error where it is missing
        import vllm
    except ImportError as e:
        raise SamiInputError(f"{INSTALL_HINT} ({e})") from None
    return vllm


def sampling_params(
    vllm: Any,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: list[str] | None,
    seed: int | None,
) -> Any:
    """`vllm.SamplingParams` for one request (temperature 0 is greedy in vLLM)."""
    return vllm.SamplingParams(
        n=1,
        max_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p if temperature > 0 else 1.0,
        stop=list(stop) if stop else None,
        seed=seed if temperature > 0 else None,
    )


class VLLMGenerator:
    """A `TextGenerator` over `vllm.LLM`."""

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        engine_kwargs: dict[str, Any] | None = None,
    ):
        self.vllm = import_vllm()
        kwargs: dict[str, Any] = {"enable_prefix_caching": True, **(engine_kwargs or {})}
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        self.llm = self.vllm.LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )

    @classmethod
    def from_settings(cls, settings: GenerationSettings, *, model: Any = None) -> VLLMGenerator:
        """`model` (a reference) overrides `settings.model`; 'default' and GGUF files resolve to a folder."""
        if model is not None and not isinstance(model, str | os.PathLike):
            raise SamiInputError("generation.backend 'vllm' loads the model itself: pass a model path, not an object")
        import_vllm()  # fail before resolving (and maybe converting) the model
        path, _ = resolve_model_path(model if model is not None else settings.model)
        return cls(
            path,
            dtype=settings.dtype or "auto",
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len,
            seed=settings.seed if settings.seed is not None else 0,
            trust_remote_code=settings.trust_remote_code,
            engine_kwargs=settings.engine_kwargs,
        )

    def close(self) -> None:
        """Shut the engine down now (its engine-core process and GPU memory), not at garbage collection, which
        can leave tens of GiB held for the training and evaluation that follow. Safe to call twice."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        shutdown = getattr(llm, "shutdown", None)  # newer vLLM's LLM.shutdown()
        if shutdown is None:
            shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
        try:
            if shutdown is not None:
                shutdown()
        finally:
            del llm
            gc.collect()
            import torch  # only to release cached GPU memory; vLLM needs torch anyway

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def generate(
        self,
        prompts: list[Prompt],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> list[Completion]:
        """One completion per prompt; with a seed, each prompt gets its own (as in the hf backend)."""
        check_request(prompts, max_new_tokens, temperature, top_p)
        if not prompts:
            return []
        if self.llm is None:
            raise RuntimeError("this VLLMGenerator was closed")
        stop = [s for s in (stop or []) if s]
        keys = [p if isinstance(p, str) else repr(p) for p in prompts]
        seeds = prompt_seeds(seed, keys) if seed is not None else [None] * len(prompts)
        params = [
            sampling_params(
                self.vllm, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=s
            )
            for s in seeds
        ]
        text_idx = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        chat_idx = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        results: list[Completion | None] = [None] * len(prompts)
        if text_idx:
            outs = self.llm.generate([prompts[i] for i in text_idx], [params[i] for i in text_idx], use_tqdm=False)
            for i, out in zip(text_idx, outs, strict=True):
                results[i] = _completion(out, stop)
        if chat_idx:
            outs = self.llm.chat([prompts[i] for i in chat_idx], [params[i] for i in chat_idx], use_tqdm=False)
            for i, out in zip(chat_idx, outs, strict=True):
                results[i] = _completion(out, stop)
        return results  # type: ignore[return-value]


def _completion(request_output: Any, stop: list[str]) -> Completion:
    """A `Completion` from a `vllm.RequestOutput` (its first sample)."""
    sample = request_output.outputs[0]
    text, found = cut_at_stop(sample.text or "", stop)
    reason = "length" if sample.finish_reason == "length" and not found else "stop"
    # vLLM's stop_reason: the stop string or token that ended the sample, None for EOS (or the budget).
    eos = sample.finish_reason == "stop" and getattr(sample, "stop_reason", None) is None and not found
    return Completion(text=text, num_tokens=len(sample.token_ids), finish_reason=reason, ended_with_eos=eos)
