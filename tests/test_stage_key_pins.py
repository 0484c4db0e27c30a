"""Every shipped config keeps its stage keys: a refactor that changed them would rerun every finished run.

`tests/data/stage_key_pins.json` holds, per config in `configs/`, its `config_hash` and the hash of each stage
(keys without input file contents, which differ per machine). Regenerate it only for an intended change:
`python tests/test_stage_key_pins.py` (and say in the commit why the keys moved).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sami.run_config import load_config
from sami.stage_parts import config_hash
from sami.stages import stage_keys

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "tests" / "data" / "stage_key_pins.json"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def keys_of(path: Path) -> dict:
    config = load_config(path)
    keys = stage_keys(config, contents=False)
    return {"config_hash": config_hash(config), "stages": {name: key.hash for name, key in keys.items()}}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_stage_keys_of_shipped_configs_are_unchanged(path):
    pinned = json.loads(PINS.read_text(encoding="utf-8"))
    assert path.name in pinned, f"{path.name} has no pin: regenerate {PINS.name}"
    assert keys_of(path) == pinned[path.name]


if __name__ == "__main__":
    PINS.write_text(json.dumps({p.name: keys_of(p) for p in CONFIGS}, indent=1, sort_keys=True) + "\n")
    sys.exit(0)
