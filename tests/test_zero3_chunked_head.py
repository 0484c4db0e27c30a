"""The LM head under DeepSpeed ZeRO-3 (CPU accelerator, gloo, 2 processes) with `logprob_chunk_size` asked for:
the chunked head, forced on there, trained weights 1e-4 away from the unsharded run, so under ZeRO-3 sami keeps
the unchunked path (`sami.lm_head._SHARDING_HOOK_MODULES`), and the weights equal one unsharded process's."""

from __future__ import annotations

import json

import pytest
from test_scaleout import assert_same_trained_weights, zero3_and_one_process


@pytest.mark.slow
def test_zero3_keeps_the_unchunked_head_and_trains_the_unsharded_weights(tmp_path, tiny_model_dir):
    one, zero3 = zero3_and_one_process(
        tmp_path, tiny_model_dir, zero3_flags=("--logprob-chunk-size", "3"), one_flags=("--logprob-chunk-size", "0")
    )
    info = json.loads((zero3 / "train_info.json").read_text())
    assert info["distributed_type"] == "DistributedType.DEEPSPEED" and info["head_chunk_sizes"] == [0]
    assert json.loads((one / "train_info.json").read_text())["head_chunk_sizes"] == [0]
    assert_same_trained_weights(one, zero3, tiny_model_dir)
