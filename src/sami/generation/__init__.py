"""Text generation backends behind one small protocol.

`TextGenerator.generate(prompts, *, max_new_tokens, temperature, top_p, stop, seed) -> list[Completion]`, with
three backends chosen by `GenerationSettings.backend`: `hf` (transformers in this process, the default),
`openai` (any OpenAI-compatible server) and `vllm` (vLLM's offline engine, an optional extra).
"""

from sami.generation.base import (
    Completion,
    GenerationSettings,
    Prompt,
    TextGenerator,
    cut_at_stop,
    make_generator,
)

__all__ = ["Completion", "GenerationSettings", "Prompt", "TextGenerator", "cut_at_stop", "make_generator"]
