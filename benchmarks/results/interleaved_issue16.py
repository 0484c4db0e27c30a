"""Interleaved in one process: bundled model, (400,60,2): chunked vs unchunked, each with bool and dense masks."""

import statistics
import sys
import time

sys.path.insert(0, "/work/wt-16/benchmarks")
import train_step as T

model, tok, _ = T.load("default")
prompts, responses = T.build_inputs(tok, 2, 400, 60)
cases = {
    "unchunked+dense": dict(chunk_size=0, dense_mask=True),
    "unchunked+bool": dict(chunk_size=0),
    "chunked+bool": dict(chunk_size=170),
    "chunked+dense": dict(chunk_size=170, dense_mask=True),
}
times = {k: [] for k in cases}
for rep in range(4):
    for name, kw in cases.items():
        model.zero_grad(set_to_none=True)
        s = time.perf_counter()
        T.sami_loss(T.prefix_matrices(model, tok, [prompts], [responses], **kw)).loss.backward()
        t = time.perf_counter() - s
        if rep:
            times[name].append(t)
        print(rep, name, round(t, 2), flush=True)
for name, ts in times.items():
    print(name, "median", round(statistics.median(ts), 2), ts, flush=True)
