"""What checking a run folder costs: recording a stage's outputs (sha256), checking them before a skip (stat only,
or sha256 after an mtime moved) and keying a model folder as an input (small files by sha256, weights by
size+mtime). Run: PYTHONPATH=src python benchmarks/run_integrity.py (needs the converted default model in
~/.cache/sami, which any run on the default model writes)."""

import os
import shutil
import tempfile
import time
from pathlib import Path

from sami.contents import check_outputs, input_digest, output_records


def main() -> None:
    src = Path.home() / ".cache/sami/models/SmolLM2-135M-Instruct"
    with tempfile.TemporaryDirectory() as d:
        run = Path(d)
        dst = run / "train"
        shutil.copytree(src, dst)
        t = time.perf_counter()
        rec = output_records([dst], run)
        t_rec = time.perf_counter() - t
        t = time.perf_counter()
        assert check_outputs(rec, run) is None
        t_stat = time.perf_counter() - t
        os.utime(dst / "model.safetensors")
        t = time.perf_counter()
        assert check_outputs(rec, run) is None
        t_digest = time.perf_counter() - t
        t = time.perf_counter()
        input_digest(dst)
        t_in = time.perf_counter() - t
        size = sum(r["size"] for r in rec.values()) / 1e6
        print(f"record (sha256 of {size:.0f} MB): {t_rec:.2f} s")
        print(f"check, mtimes unchanged: {t_stat * 1e3:.2f} ms; check after a touch: {t_digest:.2f} s")
        print(f"input key of the folder: {t_in * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
