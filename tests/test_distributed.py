"""Multi-process SFT: accelerate configs parse, and 2 gloo CPU processes reproduce the 1-process losses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from radimpress_lib.core.paths import PROJECT_ROOT
from radimpress_lib.train import distributed

CONFIGS = PROJECT_ROOT / "configs" / "accelerate"


def test_per_device_batch():
    assert distributed.per_device_batch(8, 2, 1) == 4
    assert distributed.per_device_batch(8, 2, 2) == 2
    with pytest.raises(ValueError, match="multiple of world size 3"):
        distributed.per_device_batch(8, 3, 1)


@pytest.mark.parametrize("name", ["multi_cpu", "multi_gpu", "multi_node", "deepspeed_zero3", "fsdp"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = CONFIGS / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type.value == raw["distributed_type"]
    assert cfg.num_processes == raw["num_processes"] and cfg.num_machines == raw["num_machines"]
    if name == "deepspeed_zero3":
        assert cfg.deepspeed_config["zero_stage"] == 3
    if name == "multi_cpu":
        assert cfg.use_cpu and cfg.num_machines == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], out_dir) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    proc = subprocess.run(cmd, check=False, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out_dir / "distributed.json").read_text())


@pytest.mark.timeout(600)
def test_two_gloo_processes_match_one_process(tmp_path):
    """Same effective batch (4 = 1 x 4 = 2 x 2), same seeded order: per-step losses and grad norms agree."""
    common = ["-m", "radimpress_lib.train.distributed", "--params", "ci-tiny", "--effective-batch", "4", "--max-steps", "3",
              "--threads", "1", "--no-group-by-length", "--no-eval"]
    one = _run([sys.executable, *common, "--output-dir", str(tmp_path / "p1")], tmp_path / "p1")
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "multi_cpu.yaml"),
                  "--num_processes", "2", "--main_process_port", str(_free_port())]
    two = _run([*accelerate, *common, "--output-dir", str(tmp_path / "p2")], tmp_path / "p2")
    assert (one["world_size"], one["per_device_batch"]) == (1, 4)
    assert (two["world_size"], two["per_device_batch"]) == (2, 2)
    assert one["effective_batch"] == two["effective_batch"] == 4
    assert len(one["loss_history"]) == len(two["loss_history"]) == 3
    for a, b in zip(one["loss_history"], two["loss_history"]):
        assert a["step"] == b["step"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (one["loss_history"], two["loss_history"])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
    # The updates happened (the learning rate is 0 only at the first, warm-up step).
    assert one["loss_history"][-1]["loss"] != one["loss_history"][0]["loss"]
    assert (tmp_path / "p2" / "adapter" / "adapter_config.json").is_file()
