"""Every path of a run folder, in one place: `RunLayout` (the run) and `EvalLayout` (one evaluation folder).

```
RUN/
  config.yaml              the resolved run config
  manifest.json            finished stages, their config hashes and output hashes
  constitutions.json       the principles (and their checks) every stage reads
  baselines/NAME/          baseline NAME's responses, MI responses and scores (its own stage, once per run)
  iter-0/eval/             evaluation of π_0 (the base model)
  iter-T/samples.jsonl     self-generated training data of iteration T (written by π_{T-1})
  iter-T/samples.dropped.jsonl, iter-T/samples.stats.json, iter-T/samples.rank{R}.jsonl (launch shards)
  iter-T/train.partial/    training in progress (resume checkpoints live here)
  iter-T/train/            π_T, the checkpoint of iteration T (renamed from train.partial when finished)
  iter-T/eval/             evaluation of π_T (see EvalLayout)
  iter-T/<method>/train/   a comparison model of iteration T trained on the same samples (e.g. `dpo`)
  iter-T/<method>/eval/    its evaluation (as iter-T/eval/, plus judgments-sami.jsonl: head to head vs π_T)
  report/                  summary.json, summary.md, *.png, index.html
```
Modules ask a layout for a path instead of joining names themselves, so the layout is described once (here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_ASIDE = re.compile(r"\.[0-9a-f]{8}$")


@dataclass(frozen=True)
class EvalLayout:
    """The files of one evaluation folder (`iter-T/eval/` or `sami evaluate --out DIR`)."""

    root: Path

    @property
    def responses(self) -> Path:
        """Evaluated responses under the positive constitution (model and baselines, `side` field)."""
        return self.root / "responses.jsonl"

    @property
    def mi_responses(self) -> Path:
        return self.root / "mi_responses.jsonl"

    def baseline_mi_responses(self, baseline: str) -> Path:
        """A baseline's responses under the MI constitutions (its MI and lengths in metrics.json `baselines`)."""
        return self.root / f"mi_responses-{baseline}.jsonl"

    @property
    def antithesis_responses(self) -> Path:
        return self.root / "antithesis_responses.jsonl"

    @property
    def contrast_responses(self) -> Path:
        return self.root / "contrast_responses.jsonl"

    @property
    def scores(self) -> Path:
        """The intrinsic scores of the responses (per query), written by the responses step for the metrics step."""
        return self.root / "scores.json"

    def judgments(self, baseline: str) -> Path:
        return self.root / f"judgments-{baseline}.jsonl"

    def judgments_aside(self, baseline: str, judge_hash: str) -> Path:
        """Where the verdicts of another judge are kept when the baseline is judged again (`judge_hash`: 8 hex
        digits of that judge's identity)."""
        return self.root / f"judgments-{baseline}.{judge_hash}.jsonl"

    def judgment_files(self) -> list[Path]:
        """The current judgments files, one per baseline (not the ones kept aside after a rejudge)."""
        return sorted(p for p in self.root.glob("judgments-*.jsonl") if not _ASIDE.search(p.stem))

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"


def dropped_path(samples: str | Path) -> Path:
    """`samples.jsonl` -> `samples.dropped.jsonl`."""
    samples = Path(samples)
    return samples.with_name(samples.stem + ".dropped.jsonl")


def stats_path(samples: str | Path) -> Path:
    """`samples.jsonl` -> `samples.stats.json`."""
    samples = Path(samples)
    return samples.with_name(samples.stem + ".stats.json")


def shard_path(samples: str | Path, rank: int) -> Path:
    """`samples.jsonl` -> `samples.rank{rank}.jsonl` (one process's part under `accelerate launch`)."""
    samples = Path(samples)
    return samples.with_name(f"{samples.stem}.rank{rank}{samples.suffix}")


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def constitutions(self) -> Path:
        return self.root / "constitutions.json"

    def iteration(self, t: int) -> Path:
        return self.root / f"iter-{t}"

    def iterations(self) -> list[tuple[int, Path]]:
        """The iteration folders present, in order: [(t, path), ...]."""
        found = []
        for path in self.root.glob("iter-*"):
            suffix = path.name.removeprefix("iter-")
            if path.is_dir() and suffix.isdigit():
                found.append((int(suffix), path))
        return sorted(found)

    def samples(self, t: int) -> Path:
        return self.iteration(t) / "samples.jsonl"

    def samples_stats(self, t: int) -> Path:
        return stats_path(self.samples(t))

    def train(self, t: int) -> Path:
        """π_t's checkpoint folder."""
        return self.iteration(t) / "train"

    def train_partial(self, t: int) -> Path:
        """Where training of iteration t runs (and keeps its resume checkpoints) until it finishes."""
        return self.iteration(t) / "train.partial"

    def eval(self, t: int) -> EvalLayout:
        return EvalLayout(self.iteration(t) / "eval")

    def baseline(self, name: str) -> EvalLayout:
        """The folder of baseline `name` (`evaluation.baselines`), written once per run by stage `baselines/NAME`:
        its `responses.jsonl` (side NAME), `mi_responses-NAME.jsonl` and `scores.json` (`baselines.NAME`)."""
        return EvalLayout(self.root / "baselines" / name)

    def comparison_train(self, t: int, method: str) -> Path:
        """The checkpoint of comparison `method` (e.g. `dpo`) trained in iteration t."""
        return self.iteration(t) / method / "train"

    def comparison_train_partial(self, t: int, method: str) -> Path:
        return self.iteration(t) / method / "train.partial"

    def comparison_eval(self, t: int, method: str) -> EvalLayout:
        return EvalLayout(self.iteration(t) / method / "eval")

    @property
    def report(self) -> Path:
        return self.root / "report"

    def policy(self, t: int, base: str) -> str:
        """π_t: the base model `base` for t = 0, else iteration t's checkpoint."""
        return base if t == 0 else str(self.train(t))
