"""The held-out-principles recipe: the library's split; two configs share training and differ in evaluation."""

from __future__ import annotations

import yaml
from conftest import ROOT

from sami.constitutions import load_constitutions, sample_constitutions
from sami.run_config import parse_config
from sami.stages import stage_keys


def load(name: str):
    path = ROOT / "configs" / name
    return parse_config(yaml.safe_load(path.read_text()), source=str(path))


def test_library_split_and_checks():
    cset = load_constitutions("checkable_library")
    assert len(cset.principles) >= 16 and all(p.checkable for p in cset.principles)
    train, held = set(cset.train_principles), set(cset.heldout_principles)
    assert len(held) >= 4 and not train & held and train | held == set(cset.names)
    ids = {c.id for p in cset.principles for c in p.check.checks}
    assert len(ids) >= 14  # built on many different IFEval instructions


def test_training_never_sees_heldout_principles():
    import random

    config = load("heldout_checks.yaml")
    cset = load_constitutions(config.constitutions)
    rng = random.Random(0)
    seen = set()
    for _ in range(200):
        for c in sample_constitutions(cset, config.sampling.scheme, config.sampling.n_constitutions, rng):
            seen |= {p.name for p, _ in c.items}
    assert seen == set(cset.train_principles)


def test_heldout_config_reuses_training_and_benchmarks():
    a, b = load("heldout_checks.yaml"), load("heldout_checks_heldout.yaml")
    assert a.evaluation.mode == "train" and b.evaluation.mode == "heldout"
    assert a.model_dump(exclude={"evaluation": {"mode"}}) == b.model_dump(exclude={"evaluation": {"mode"}})
    ka, kb = stage_keys(a), stage_keys(b)
    assert list(ka) == list(kb) and "iter-2/benchmarks" in ka
    same = [n for n in ka if ka[n] == kb[n]]
    assert set(same) >= {"constitutions", "iter-1/samples", "iter-1/train", "iter-2/train", "iter-0/benchmarks"}
    assert ka["iter-1/responses"] != kb["iter-1/responses"]
