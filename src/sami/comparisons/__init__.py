"""Methods trained beside SAMI on the same self-generated samples, evaluated the same way (DPO and SFT through TRL).

`sami.comparisons.dpo`: the preference pairs of `samples.jsonl`, `DPOSettings` (the run config's `comparisons.dpo`)
and `train_dpo`; `sami.comparisons.sft`: the SFT examples (bare query -> the positive constitution's response),
`SFTSettings` (`comparisons.sft`) and `train_sft`; `sami.comparisons.trl_args`: their TRL configs;
`sami.comparisons.stages`: their records in the run's stage table (`sami.stages`). TRL is imported only when a
comparison trains (`pip install 'sami[compare]'`).
"""
