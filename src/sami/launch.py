"""Running `sami` stages under `accelerate launch`.

The shipped accelerate configs (`ddp`, `fsdp`, `zero3`) live in `sami/assets/accelerate/`; a launcher `config`
is one of those names or a path to any accelerate config file. Without a GPU the stage runs on the CPU over gloo:
a DeepSpeed config (`zero3`) runs as it is, with DeepSpeed's CPU accelerator; any other config is ignored there
(accelerate enables FSDP only on GPU-class devices) and the ranks are plain data parallel.

```
accelerate_command(["train", "--samples", "s.jsonl", ...], num_processes=8, config="fsdp")
# -> [python, -m, accelerate.commands.launch, --num_processes, 8, --config_file, .../fsdp.yaml, ...,
#     -m, sami.cli, train, --samples, s.jsonl, ...]
```
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sami.errors import SamiInputError

log = logging.getLogger(__name__)

ACCELERATE_CONFIGS = ("ddp", "fsdp", "zero3")
ERROR_FILE_ENV = "SAMI_STAGE_ERROR_FILE"  # where a child `sami` writes its one-line input error


def accelerate_config_path(ref: str | os.PathLike) -> Path:
    """A shipped accelerate config by name (`ddp`, `fsdp`, `zero3`) or an existing config file path."""
    name = str(ref)
    if name in ACCELERATE_CONFIGS:
        return Path(str(resources.files("sami") / "assets" / "accelerate" / f"{name}.yaml"))
    path = Path(name).expanduser()
    if not path.is_file():
        raise SamiInputError(
            f"accelerate config {name!r}: not a shipped config ({', '.join(ACCELERATE_CONFIGS)}) nor an existing file"
        )
    return path


def is_deepspeed_config(path: str | os.PathLike) -> bool:
    """Whether an accelerate config file asks for DeepSpeed (`distributed_type: DEEPSPEED`)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and str(data.get("distributed_type", "")).upper() == "DEEPSPEED"


def uses_deepspeed(cmd: list[str]) -> bool:
    """Whether an `accelerate_command` argv launches with a DeepSpeed config."""
    return "--config_file" in cmd and is_deepspeed_config(cmd[cmd.index("--config_file") + 1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_gpu() -> bool:
    try:
        # torch: sami.cli imports this module, and `sami --help` stays free of torch
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


def accelerate_command(
    sami_args: list[str],
    *,
    num_processes: int = 1,
    config: str | os.PathLike | None = None,
    extra_args: list[str] | tuple[str, ...] = (),
    cpu: bool | None = None,
    main_process_port: int | None = None,
    num_machines: int = 1,
    machine_rank: int = 0,
    main_process_ip: str | None = None,
) -> list[str]:
    """The argv that runs `sami SAMI_ARGS...` under `accelerate launch` with `num_processes` processes.

    `num_processes` counts all machines (accelerate's meaning): with `num_machines` > 1 every machine runs this
    command with its own `machine_rank` and starts `num_processes / num_machines` processes, which meet at
    `main_process_ip:main_process_port` (machine 0). `cpu` defaults to "no CUDA device here"; on CPU the processes
    talk over gloo and `config` is ignored (the shipped configs target GPUs). Without a `config`, several GPU
    processes run plain DDP. `extra_args` go to `accelerate launch` unchanged, after the generated ones, so they
    win.
    """
    if num_processes < 1:
        raise SamiInputError(f"launcher.num_processes: must be >= 1, got {num_processes}")
    if num_machines > 1 and (main_process_ip is None or main_process_port is None):
        raise SamiInputError("launcher: num_machines > 1 needs main_process_ip and main_process_port")
    if not 0 <= machine_rank < num_machines or num_processes % num_machines:
        raise SamiInputError(
            f"launcher: machine_rank {machine_rank} of {num_machines} machines, {num_processes} processes in all"
        )
    cpu = (not _has_gpu()) if cpu is None else cpu
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    cmd += ["--num_machines", str(num_machines), "--dynamo_backend", "no"]
    if num_machines > 1:
        cmd += ["--machine_rank", str(machine_rank), "--main_process_ip", main_process_ip]
    deepspeed_on_cpu = False
    if config is not None:
        path = accelerate_config_path(config)
        deepspeed_on_cpu = cpu and is_deepspeed_config(path)
        if cpu and not deepspeed_on_cpu:
            log.warning("no GPU: ignoring accelerate config %s and running %d CPU processes", path, num_processes)
        else:
            cmd += ["--config_file", str(path)]
    if deepspeed_on_cpu:
        # DeepSpeed's CPU accelerator talks over gloo (see `launch_env` and `SAMIConfig`); no bf16 autocast here.
        cmd += ["--mixed_precision", "no"]
    elif cpu:
        # `accelerate launch --cpu` starts a single process (several CPU processes need mpirun); the torchrun
        # launcher behind --multi_gpu starts N processes, and ACCELERATE_USE_CPU (see `launch_env`) makes them
        # form a gloo group on the CPU.
        cmd += ["--multi_gpu"] if num_processes > 1 or num_machines > 1 else ["--cpu"]
        cmd += ["--mixed_precision", "no"]
    elif config is None:
        cmd += ["--mixed_precision", "no"] + (["--multi_gpu"] if num_processes > 1 else [])
    if (num_processes > 1 or num_machines > 1) and "--main_process_port" not in extra_args:
        cmd += ["--main_process_port", str(main_process_port or _free_port())]
    cmd += list(extra_args)
    cmd += ["-m", "sami.cli", *sami_args]
    return cmd


def launch_env(*, cpu: bool | None = None, deepspeed: bool = False) -> dict[str, str]:
    """Environment for the launched processes: CPU-only runs need ACCELERATE_USE_CPU so every rank (the
    Trainer's and `sami.distributed`'s) joins a gloo process group; one thread per rank avoids oversubscription.
    A DeepSpeed launch on the CPU must not set it: accelerate then switches DeepSpeed off."""
    cpu = (not _has_gpu()) if cpu is None else cpu
    if not cpu:
        return {}
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return env if deepspeed else {"ACCELERATE_USE_CPU": "true", **env}


def launcher_command(launcher: Any, sami_args: list[str]) -> list[str]:
    """`accelerate_command` from a `LauncherSettings` (processes, config, machines, extra_args)."""
    return accelerate_command(
        sami_args,
        num_processes=launcher.num_processes,
        config=launcher.config,
        extra_args=list(launcher.extra_args),
        num_machines=launcher.num_machines,
        machine_rank=launcher.machine_rank,
        main_process_ip=launcher.main_process_ip,
        main_process_port=launcher.main_process_port,
    )


def run_launched(cmd: list[str], *, what: str, env: dict[str, str] | None = None) -> int:
    """Run a `sami` child process (plain, or an `accelerate launch` command) in the foreground (its output goes to
    this terminal); return its pid, or raise if it fails.

    An exit status of 2 is the child's input error: it becomes a `SamiInputError` here, carrying the child's own
    one-line message (which the child writes to the file `SAMI_STAGE_ERROR_FILE` names instead of printing it).
    """
    log.info("launching %s: %s", what, " ".join(cmd))
    fd, error_path = tempfile.mkstemp(prefix="sami-stage-error-", suffix=".txt")
    os.close(fd)
    error_file = Path(error_path)
    # a launch's ranks share the cores (one thread each on the CPU); a plain child process has them to itself
    is_launch = "accelerate.commands.launch" in cmd
    launched = launch_env(deepspeed=uses_deepspeed(cmd)) if is_launch else {}
    child_env = {**os.environ, **launched, **(env or {}), ERROR_FILE_ENV: error_path}
    try:
        proc = subprocess.Popen(cmd, env=child_env)
        code = proc.wait()
        message = error_file.read_text(encoding="utf-8", errors="replace").strip()
    finally:
        error_file.unlink(missing_ok=True)
    if code == 2:
        raise SamiInputError(message or f"{what}: failed in its process (see the error above)")
    if code != 0:
        kind = "accelerate launch" if is_launch else "its process"  # the test suite reruns a gloo abort by this name
        raise RuntimeError(f"{what}: {kind} exited with status {code}" + (f": {message}" if message else ""))
    return proc.pid


def run_stage(launcher: Any, sami_args: list[str], *, what: str) -> int:
    """Run `sami SAMI_ARGS...` as configured by `launcher` (a `LauncherSettings` with kind 'accelerate'); return the
    launcher's pid."""
    return run_launched(launcher_command(launcher, sami_args), what=what)


def relaunch_argv(argv: list[str], drop: dict[str, bool]) -> list[str]:
    """`argv` without the launcher options in `drop` (option -> takes a value), to re-run under accelerate."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name, eq, _ = arg.partition("=")
        if name in drop:
            skip = drop[name] and not eq
            continue
        out.append(arg)
    return out
