"""How far the scored log-prob of self-generated responses is from their generation-time log-prob (issue 15).

The default model writes greedy answers to bundled HH queries under the dialogue templates (base and chat style);
each answer is stored as the sampler stores it (post-processed, without its leading whitespace) and scored under
its generation prompt twice:

* old rule (before issue 15): response ids = `tokenizer(response, add_special_tokens=False)` + EOS always;
* new rule (`sami.logprob_matrix` with the recorded separator and `ended_with_eos`, `eos="generated"`).

The reference is the log-prob the generator summed while generating (`HFGenerator(logprobs=True)`), over the
generated ids plus EOS when the model ended with it. Only answers whose stored text is the whole generation
(not cut by a stop string, no trailing whitespace stripped) have one; the others are counted.

    PYTHONPATH=src python benchmarks/token_fidelity.py --queries 16 --max-new-tokens 16 [--dtype float64]

In float64 what is left of the new rule's gap is the boundary rule itself; in float32 it includes the summation
order of KV-cached decoding against one full forward (~3e-4 nats over 16 tokens).
"""

from __future__ import annotations

import argparse
import json

import torch

from sami.constitutions import load_constitutions, sample_constitutions
from sami.data import QuerySource, load_queries
from sami.generation.hf import HFGenerator
from sami.lm_head import accumulation_dtype
from sami.logprobs import logprob_matrix
from sami.models import load_model, load_tokenizer
from sami.prompts import get_template, render_prompt
from sami.sampling import query_rng
from sami.tokens import encode_prompts


def old_rule_logprob(model, tok, prompt: str, response: str) -> float:
    """The pre-issue-15 score: prompt ids + ids of the response tokenized alone + EOS."""
    p = tok(prompt).input_ids
    r = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        logps = torch.log_softmax(logits.to(accumulation_dtype(logits.dtype)), dim=-1)
    return float(sum(logps[len(p) - 1 + k, t] for k, t in enumerate(r)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="the model's weights")
    args = ap.parse_args()
    torch.manual_seed(0)
    tok, model = load_tokenizer("default"), load_model("default").eval().to(getattr(torch, args.dtype))
    gen = HFGenerator(model, tok, batch_size=16, logprobs=True)
    queries = load_queries(QuerySource(bundled="hh_helpful_test", limit=args.queries))
    cset = load_constitutions("hh_opus")

    results = {}
    for style in ("base", "chat"):
        template = get_template("dialogue", style)
        rows = []
        prompts, texts = [], []
        for q in queries:
            for c in sample_constitutions(cset, "uniform", 2, query_rng(0, q.id), query=q):
                prompts.append(template.generation_prompt(c, q.query))
                texts.append(render_prompt(prompts[-1], tok))
        outs = gen.generate(prompts, max_new_tokens=args.max_new_tokens, stop=template.stop or None)
        for text, c in zip(texts, outs, strict=True):
            response = template.postprocess(c.text)
            sep = template.separator(c.text)
            # The reference exists when the stored text is the whole generation (not cut at a stop string).
            whole = (c.ended_with_eos or c.finish_reason == "length") and sep + response == c.text
            if not response.strip():
                continue
            with torch.no_grad():
                new = logprob_matrix(
                    model,
                    tok,
                    [text],
                    [response],
                    normalize="sum",
                    separators=[sep],
                    ended_with_eos=[c.ended_with_eos],
                )
            new = float(new[0, 0])
            old = old_rule_logprob(model, tok, text, response)
            gen_ids = c.token_ids + ([tok.eos_token_id] if c.ended_with_eos else [])
            joint = tok(text + sep + response, add_special_tokens=False).input_ids
            n_prompt = len(encode_prompts(tok, [text])[0])
            new_ids = joint[n_prompt:] + ([tok.eos_token_id] if c.ended_with_eos else [])
            old_ids = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
            rows.append(
                {
                    "whole": whole,
                    "eos": c.ended_with_eos,
                    "gap_new": abs(new - c.logprob) if whole else None,
                    "gap_old": abs(old - c.logprob) if whole else None,
                    "ids_new": new_ids == gen_ids if whole else None,
                    "ids_old": old_ids == gen_ids if whole else None,
                }
            )
        whole = [r for r in rows if r["whole"]]
        results[style] = {
            "answers": len(rows),
            "compared (whole generation kept)": len(whole),
            "ended_with_eos": sum(bool(r["eos"]) for r in rows),
            "old rule: max |gap| nats": round(max(r["gap_old"] for r in whole), 4) if whole else None,
            "old rule: mean |gap| nats": round(sum(r["gap_old"] for r in whole) / len(whole), 4) if whole else None,
            "old rule: ids equal": sum(r["ids_old"] for r in whole),
            "new rule: max |gap| nats": round(max(r["gap_new"] for r in whole), 6) if whole else None,
            "new rule: ids equal": sum(r["ids_new"] for r in whole),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
