"""Evaluation: pairwise judges, win rates (raw, length-balanced, length-controlled), MI estimates and lengths.

- `sami.evaluation.winrate.summarize(records)`: win-rate statistics from judgment records (numpy only).
- `sami.evaluation.judges`: `make_judge` (`api` over an OpenAI-compatible endpoint, `local` on an HF model's
  next-token probabilities, `rules` on the principles' checks); its settings `sami.evaluation.judge_settings`, its
  prompts `sami.evaluation.judge_prompts`, the verdict parser `sami.evaluation.verdicts.parse_verdict`.
- `sami.evaluation.metrics.intrinsic_metrics(model, tokenizer, records, template=...)`: the paper's MI, the
  InfoNCE bound and mean lengths by constitution.
- `sami.evaluation.evaluate`: `EvaluationSettings`, `run_evaluation` (the stage behind `sami evaluate` and the
  pipeline, in steps responses -> judgments -> metrics), (a run's settings: `sami.stage_settings`).
"""

from sami.evaluation.winrate import summarize

__all__ = ["summarize"]
