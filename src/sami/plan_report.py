"""`sami plan`'s text: the plan of every stage (`format_plan`) and one line per stage that does not fit."""

from __future__ import annotations

from sami.plan import GB
from sami.plan_run import RunPlan, gb_text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{seconds / 60:.1f}m"


def format_plan(plan: RunPlan) -> str:
    d, s, shape = plan.devices, plan.settings, plan.policy
    peak = f"{d.tflops:g} TFLOP/s bf16, {d.bandwidth_gbs:g} GB/s" if d.tflops and d.bandwidth_gbs else "no throughput"
    lines = [
        f"plan of {plan.source} on {d} ({peak})",
        f"policy {shape.name}: {shape.n_params / 1e9:.2f} B parameters ({shape.source}); P = {plan.dims['P']} "
        f"prompt tokens, R = {plan.dims['R_train']} (training), C = {plan.dims['C']}; {plan.dims['train queries']} "
        f"training queries per iteration, {plan.dims['eval queries']} evaluation queries",
        "",
        f"{'stage':<26} {'per device':>11}  {'fits':<4} {'time':>8}  where",
    ]
    for st in plan.stages:
        mem = "-" if st.memory is None else gb_text(st.memory.total + s.runtime_reserve_gb * GB)
        each = ", ".join(_duration(x) for x in st.seconds)
        lines.append(
            f"{st.name:<26} {mem:>11}  {'yes' if st.fits else 'NO':<4} {_duration(st.total_seconds):>8}  {st.where}"
        )
        if st.memory is not None:
            parts = ", ".join(f"{k} {gb_text(v)}" for k, v in st.memory.parts.items())
            lines.append(f"{'':<28}{parts}, reserve {s.runtime_reserve_gb:g} GB")
        lines.append(f"{'':<28}per iteration: {each}")
        lines += [f"{'':<28}{n}" for n in st.notes]
        if not st.fits:
            lines.append(f"{'':<28}does not fit: {st.reason}")
            lines += [f"{'':<28}change: {a}" for a in st.advice]
    totals = [st.total_seconds for st in plan.stages]
    total = None if None in totals else sum(totals)  # type: ignore[arg-type]
    lines += [
        "",
        f"estimated wall time: {_duration(total)} (responses at their full token budget: an upper bound)",
        f"assumptions: train_mfu {s.train_mfu}, bandwidth_efficiency {s.bandwidth_efficiency}, hf_step_overhead_s "
        f"{s.hf_step_overhead_s}, vllm_max_seqs {s.vllm_max_seqs}, api_latency_s {s.api_latency_s}, "
        f"runtime_reserve_gb {s.runtime_reserve_gb} (sami plan --help; formulas: sami.plan)",
    ]
    return "\n".join(lines)


def unfit_lines(plan: RunPlan) -> list[str]:
    """One line per stage that does not fit: the stage, why, and the first thing to change."""
    return [
        f"{st.name}: does not fit: {st.reason}" + (f"; change: {st.advice[0]}" if st.advice else "")
        for st in plan.stages
        if not st.fits
    ]
