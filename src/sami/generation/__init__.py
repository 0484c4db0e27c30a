"""Text generation backends behind one small protocol.

`TextGenerator.generate(prompts, *, max_new_tokens, temperature, top_p, stop, seed) -> list[Completion]`, with
three backends chosen by the `backend` of `GenerationSettings` (a union of `HFGeneration`, `OpenAIGeneration`,
`VLLMGeneration`; `parse_generation(**fields)` picks one): `hf` (transformers in this process, the default),
`openai` (any OpenAI-compatible server) and `vllm` (vLLM's offline engine, an optional extra).
`sami.generation.factory.make_generator(settings)` builds one (it imports the backends, so this package does not).
"""

from sami.generation.base import (
    Completion,
    GenerationSettings,
    HFGeneration,
    OpenAIGeneration,
    Prompt,
    TextGenerator,
    VLLMGeneration,
    cut_at_stop,
    parse_generation,
)

__all__ = [
    "Completion",
    "GenerationSettings",
    "HFGeneration",
    "OpenAIGeneration",
    "Prompt",
    "TextGenerator",
    "VLLMGeneration",
    "cut_at_stop",
    "parse_generation",
]
