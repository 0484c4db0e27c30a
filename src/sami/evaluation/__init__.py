"""Evaluation: pairwise judges, win rates (raw, length-balanced, length-controlled), MI estimates and lengths.

- `sami.evaluation.winrate.summarize(records)`: win-rate statistics from judgment records (numpy only).
- `sami.evaluation.judges`: `make_judge` (`api` over an OpenAI-compatible endpoint, `local` on an HF model's
  next-token probabilities, `rules` on the principles' checks); its settings `sami.evaluation.judge_settings`, its
  prompts `sami.evaluation.judge_prompts`, the verdict parser `sami.evaluation.verdicts.parse_verdict`.
- `sami.evaluation.metrics.intrinsic_metrics(model, tokenizer, records, template=...)`: the paper's MI, the
  InfoNCE bound and mean lengths by constitution.
- `sami.evaluation.evaluate`: `run_evaluation(settings, model_ref, out_dir, inputs)` (the stage behind
  `sami evaluate` and the pipeline, in steps responses -> judgments -> metrics); its parts: `settings`
  (`EvaluationSettings`, `BaselineSettings`), `context` (`EvaluationInputs`, the resolved `Evaluation`),
  `responses_step`, `baselines`, `scores` (`ScoresFile`, the owner of scores.json), `judgments`, `metrics_step`,
  `templates`, `devices`. A run's settings: `sami.stage_settings`; the run files' models: `sami.run_files`.
"""

from sami.evaluation.winrate import summarize

__all__ = ["summarize"]
