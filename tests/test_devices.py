"""Where commands run and in which precision (`digseg.devices`): every case of the `auto` rule, the launched
process's own GPU, and a one-line error for each request the machine cannot meet. CUDA and MPS availability are
monkeypatched: the choice itself is tested here; benchmarks/gpu_check.sh runs the commands on a real GPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from digseg import devices
from digseg.cli import main
from digseg.devices import resolve_device, resolve_device_and_dtype, resolve_dtype
from digseg.errors import ConfigError


def _machine(monkeypatch, gpus: int = 0, capability: tuple[int, int] = (9, 0), mps: bool = False,
             world: int | None = None, local_rank: int | None = None) -> None:
    """Pretend this machine has `gpus` CUDA devices of `capability` (and MPS), optionally inside a launcher."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    for name, value in (("WORLD_SIZE", world), ("LOCAL_RANK", local_rank)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(value))


@pytest.mark.parametrize("gpus, capability, mps, expected", [
    (0, (9, 0), False, ("cpu", torch.float32)),
    (0, (9, 0), True, ("mps", torch.float16)),
    (1, (9, 0), True, ("cuda:0", torch.bfloat16)),  # CUDA before MPS
    (2, (8, 0), False, ("cuda:0", torch.bfloat16)),
    (1, (7, 5), False, ("cuda:0", torch.float16)),  # a GPU without bf16: fp16
])
def test_auto_picks_the_best_device_and_its_dtype(monkeypatch, gpus, capability, mps, expected):
    _machine(monkeypatch, gpus, capability, mps)
    device, dtype = resolve_device_and_dtype("auto", "auto")
    assert (str(device), dtype) == expected


def test_a_launched_process_takes_its_own_gpu(monkeypatch):
    _machine(monkeypatch, gpus=4, world=4, local_rank=2)
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda") == torch.device("cuda", 2)  # `cuda` alone: this process's GPU
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # a named GPU stays named
    _machine(monkeypatch, gpus=0, world=2, local_rank=1)  # CPU processes (gloo)
    assert resolve_device("auto") == torch.device("cpu")
    _machine(monkeypatch, gpus=2, world=1, local_rank=0)  # one process: not launched
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_explicit_choices(monkeypatch):
    _machine(monkeypatch, gpus=2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    cpu = torch.device("cpu")
    assert [resolve_dtype(d, cpu) for d in ("fp32", "bf16", "fp16")] == [torch.float32, torch.bfloat16, torch.float16]
    assert resolve_dtype(torch.bfloat16, "cuda:0") == torch.bfloat16
    assert devices.dtype_name(torch.bfloat16) == "bf16" and devices.dtype_name(torch.float64) == "float64"


@pytest.mark.parametrize("machine, device, dtype, message", [
    (dict(gpus=0), "cuda", "auto", "device 'cuda': no CUDA device is available"),
    (dict(gpus=2), "cuda:3", "auto", "this machine has 2 CUDA device(s), cuda:0 to cuda:1"),
    (dict(gpus=0, world=2, local_rank=1), "cuda", "auto", "no CUDA device is available"),
    (dict(gpus=1, world=2, local_rank=1), "cuda", "auto", "this machine has 1 CUDA device(s)"),
    (dict(mps=False), "mps", "auto", "MPS is not available"),
    (dict(), "gpu", "auto", "unknown device 'gpu': choose auto, cpu, cuda, cuda:N or mps"),
    (dict(), "cpu:1", "auto", "unknown device 'cpu:1'"),
    (dict(gpus=1, capability=(7, 0)), "cuda", "bf16", "Test GPU does not support bfloat16; use --dtype fp16 or fp32"),
    (dict(), "cpu", "float8", "unknown dtype 'float8': choose auto, fp32, bf16, fp16"),
])
def test_impossible_requests_are_one_line_errors(monkeypatch, machine, device, dtype, message):
    _machine(monkeypatch, **machine)
    with pytest.raises(ConfigError) as error:
        resolve_device_and_dtype(device, dtype)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_commands_refuse_an_impossible_device_before_any_work(tmp_path, capsys):
    """No CUDA here: `--device cuda` stops every command in one line, before the model (which does not even
    exist) is read or anything is written."""
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    out = tmp_path / "out"
    for argv in (["predict", "--model", str(tmp_path / "no-model"), "--image", str(image), "--output", str(out)],
                 ["eval", "--model", str(tmp_path / "no-model"), "--dataset", "folder", "--data-root", str(tmp_path),
                  "--output", str(out / "eval")],
                 ["train-mask-decoder", "--model", str(tmp_path / "no-model"), "--output", str(out)]):
        assert main([*argv, "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: device 'cuda': no CUDA device") and "\n" not in err, err
        assert not out.exists()
    assert main(["demo", "--model", str(tmp_path), "--device", "cuda:0"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_models_load_in_the_dtype_asked(tiny_pipe, tmp_path):
    """Loaded in bf16 (not loaded in fp32, then cast): every component's weights, whichever keyword names it."""
    from digseg import DiGSegPipeline

    tiny_pipe.save_pretrained(tmp_path / "model")
    for keyword in ("dtype", "torch_dtype"):
        pipe = DiGSegPipeline.from_pretrained(tmp_path / "model", **{keyword: torch.bfloat16})
        for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_pathway):
            assert {p.dtype for p in module.parameters()} == {torch.bfloat16}, (keyword, type(module).__name__)
        out = pipe(torch.rand(3, 32, 32), prompt="circle", show_progress_bar=False)
        assert out.labels.shape == (1, 32, 32)


def test_runtime_info_says_where_a_run_was():
    import diffusers

    import digseg

    info = devices.runtime_info("cpu", torch.bfloat16, num_processes=2)
    assert json.loads(json.dumps(info)) == info  # JSON values, as the outputs write it
    cpu = {k: v for k, v in info.items() if k != "device_name"}
    assert cpu == {"device": "cpu", "dtype": "bf16", "num_processes": 2, "torch": torch.__version__,
                   "diffusers": diffusers.__version__, "digseg": digseg.__version__, "memory_mib": None,
                   "memory_reserved_mib": None}
    assert info["device_name"].endswith(f" ({os.cpu_count()} cores)"), info["device_name"]
    if Path("/proc/cpuinfo").is_file():  # Linux: the CPU's model, as the kernel names it
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
        if models:
            assert info["device_name"] == f"{models[0]} ({os.cpu_count()} cores)"


def test_training_log_lines_carry_no_gpu_memory_on_a_cpu(tmp_path):
    """On a CPU, log.jsonl's loss lines hold the step, loss and lr only (test_gpu.py checks the GPU memory fields
    on CUDA, against torch.cuda's own peak)."""
    from types import SimpleNamespace

    from digseg.training.tracking import TrainingLogger

    accelerator = SimpleNamespace(device=torch.device("cpu"), is_main_process=True)
    TrainingLogger(accelerator, tmp_path, {}, use_trackers=False).log_scalars(1, 0.5, 1e-4)
    assert (tmp_path / "log.jsonl").read_text().splitlines() == ['{"step": 1, "loss": 0.5, "lr": 0.0001}']
