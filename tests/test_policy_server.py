"""A server backend generates with the policy it is given, or the run stops before writing samples
(`sami.generation.server`): a scripted loopback server serving the wrong model, the right one, and one the run
starts itself (`generation.server`)."""

from __future__ import annotations

import http.server
import json
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import ROOT, free_port, loopback_server
from fake_openai_server import make_handler
from test_pipeline import tiny_config, write_config

from sami.cli import main
from sami.errors import SamiInputError
from sami.generation.base import parse_generation
from sami.generation.server import check_served_policy, managed_server, matching_model
from sami.io import read_jsonl


def openai_config(model_dir, **generation) -> dict:
    config = tiny_config(model_dir, generation={"backend": "openai", "max_concurrency": 2, **generation})
    config["iterations"] = {"count": 2, "steps": [1, 1]}
    config["evaluation"]["baselines"] = {}  # the judge is not this test's subject
    return config


def test_listed_model_matches_by_id_or_vllm_root(tmp_path):
    ckpt = tmp_path / "iter-1" / "train"
    ckpt.mkdir(parents=True)
    assert matching_model([{"id": "base"}, {"id": str(ckpt)}], str(ckpt)) == str(ckpt)
    assert matching_model([{"id": "policy", "root": str(ckpt) + "/"}], str(ckpt)) == "policy"
    assert matching_model([{"id": "base", "root": str(tmp_path)}], str(ckpt)) is None


@contextmanager
def server_on(port: int, handler) -> Iterator[str]:
    """`handler` served on `port` (one URL for both servers: the run's config, and so its hashes, stay the same)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_wrong_served_model_stops_the_run_before_samples_then_right_one_resumes(tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "run"
    policy = run / "iter-1" / "train"
    port = free_port()
    wrong: list[str] = []
    with server_on(port, make_handler([{"id": "base-model"}], wrong)) as url:
        cfg = write_config(tmp_path / "cfg.yaml", openai_config(tiny_model_dir, base_url=url))
        assert main(["run", str(cfg), "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "iter-2/samples" in err and str(policy.resolve()) in err and "'base-model'" in err
    assert "rerun the same command to resume" in err and "Traceback" not in err
    assert (run / "iter-1" / "samples.jsonl").exists()  # π₀ came from the server as configured
    assert not (run / "iter-2" / "samples.jsonl").exists()  # nothing generated with the wrong policy
    n_before = len(wrong)

    right: list[str] = []
    with server_on(port, make_handler([{"id": "base-model"}, {"id": "pi1", "root": str(policy)}], right)) as url:
        cfg = write_config(tmp_path / "cfg.yaml", openai_config(tiny_model_dir, base_url=url))
        assert main(["run", str(cfg), "--output-dir", str(run)]) == 0
    assert len(wrong) == n_before  # no request was sent to the wrong server for iteration 2
    assert len(right) == n_before and set(right) == {"pi1"}  # iteration 2 alone, all with the checkpoint's id
    assert len(read_jsonl(run / "iter-2" / "samples.jsonl")) == len(read_jsonl(run / "iter-1" / "samples.jsonl"))


def test_the_run_starts_and_stops_the_server_on_each_policy(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    record = tmp_path / "server.jsonl"
    port = free_port()
    script = ROOT / "tests" / "fake_openai_server.py"
    server = f"{sys.executable} {script} --model {{model}} --port {{port}} --record {record}"
    cfg = write_config(tmp_path / "cfg.yaml", openai_config(tiny_model_dir, server=server, server_port=port))
    assert main(["run", str(cfg), "--output-dir", str(run)]) == 0
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    started = [x["started"] for x in lines if "started" in x]
    assert started == [str(tiny_model_dir), str(run / "iter-1" / "train")]
    asked = [x["model"] for x in lines if "model" in x]
    assert set(asked) == {str(tiny_model_dir), str(run / "iter-1" / "train")}
    assert check_port_free(port)  # stopped after its stage


def check_port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_a_server_that_exits_at_once_is_one_line(tmp_path, tiny_model_dir, capsys):
    cfg = openai_config(tiny_model_dir, server=f"{sys.executable} -c 'raise SystemExit(3)' {{model}}")
    assert main(["run", str(write_config(tmp_path / "cfg.yaml", cfg)), "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "iter-1/samples: generation.server exited with code 3 before serving" in err


@pytest.mark.parametrize("template", ["serve {model} --port {nope}"])
def test_bad_template_is_an_input_error(tmp_path, template):
    settings = parse_generation(backend="openai", server=template, server_port=free_port())
    with pytest.raises(SamiInputError, match="generation.server: bad command template"):
        with managed_server(settings, "/x", what="t", log_path=tmp_path / "log"):
            pass


def test_check_names_what_to_serve(tmp_path):
    with loopback_server(make_handler([{"id": "other"}], [])) as url:
        settings = parse_generation(backend="openai", base_url=url)
        with pytest.raises(SamiInputError, match=r"serve it \(e.g. `vllm serve /ckpt`\)"):
            check_served_policy(settings, "/ckpt", what="iter-2/samples")
