"""GPU checks (marker `gpu`): every pipeline path on the device, bf16, the trainer and torch.compile on CUDA.

Skipped without CUDA. `benchmarks/gpu_check.sh` runs them on a GPU machine (`pytest -m gpu`); its `--cpu-smoke`
mode runs them on this CPU with `DIGSEG_TEST_DEVICE=cpu`, so the file is known to work before it meets a GPU.
Each test compares the device's result with the CPU's from the same seeds (the starting noise is drawn on the
CPU generator and moved, so both runs denoise the same noise): equal up to float rounding (cuDNN's TF32
convolutions, bf16), not bit for bit.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from digseg.data.synthetic import SyntheticScenes
from digseg.models.mask_decoder import LightMaskDecoder
from training_helpers import train_config, trainer

DEVICE = os.environ.get("DIGSEG_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE is None, reason="no CUDA device (DIGSEG_TEST_DEVICE=cpu runs these on the CPU)"),
]

# (name, call kwargs): every query mode and ensemble path of DiGSegPipeline.__call__
CALLS = [
    ("binary", dict(prompt="circle")),
    ("palette", dict()),
    ("per-class", dict(classes=["circle", "square", "sky"])),
    ("top-k", dict(classes=["circle", "square", "sky", "road"], top_k=2)),
    ("ensemble 4x2 median", dict(prompt="square", ensemble_size=4, num_inference_steps=2)),
    ("ensemble 3x2 decode_members", dict(prompt="square", ensemble_size=3, num_inference_steps=2, decode_members=True)),
    ("light decoder", dict(prompt="circle", mask_decoder="light")),
]


def _run(pipe, images, **kwargs):
    return pipe(images, generator=torch.Generator().manual_seed(0), output_type="pt", batch_size=2, **kwargs)


def _images():
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(3, 64, 64, generator=gen), torch.rand(3, 64, 64, generator=gen)]


def _on_device(module: torch.nn.Module) -> bool:
    return all(p.device.type == torch.device(DEVICE).type for p in module.parameters())


def test_every_pipeline_path_on_the_device(tiny_pipe):
    tiny_pipe.set_mask_decoder(LightMaskDecoder.for_vae(tiny_pipe.vae, block_channels=[32, 16, 16]))
    images = _images()
    reference = {name: _run(tiny_pipe, images, **kw) for name, kw in CALLS}  # on the CPU
    tiny_pipe.to(DEVICE)
    for module in (tiny_pipe.unet, tiny_pipe.vae, tiny_pipe.text_pathway, tiny_pipe.text_encoder, tiny_pipe.mask_decoder):
        assert _on_device(module), module.__class__.__name__
    for name, kw in CALLS:
        out = _run(tiny_pipe, images, **kw)
        ref = reference[name]
        assert out.labels.device.type == "cpu" and out.labels.shape == ref.labels.shape, name
        assert torch.isfinite(out.probabilities).all(), name
        torch.testing.assert_close(out.probabilities, ref.probabilities, atol=2e-2, rtol=0, msg=name)
        if ref.uncertainty is not None:
            torch.testing.assert_close(out.uncertainty, ref.uncertainty, atol=2e-2, rtol=0, msg=name)


def test_bf16_pipeline_close_to_fp32(tiny_pipe):
    tiny_pipe.to(DEVICE)
    images = _images()
    fp32 = _run(tiny_pipe, images, prompt="circle", ensemble_size=2, num_inference_steps=2)
    tiny_pipe.to(DEVICE, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in tiny_pipe.unet.parameters())
    bf16 = _run(tiny_pipe, images, prompt="circle", ensemble_size=2, num_inference_steps=2)
    assert bf16.probabilities.dtype == torch.float32  # outputs stay float32 whatever the model's dtype
    assert (bf16.probabilities - fp32.probabilities).abs().mean() < 0.03


def test_trainer_learns_on_the_device_with_bf16_autocast(tiny_pipe, tmp_path):
    from digseg.training.batches import LatentBatcher, step_generator
    from digseg.training.trainer import diffusion_loss

    pipe = tiny_pipe
    data = SyntheticScenes(8, seed=0)
    config = train_config(output_dir=str(tmp_path / "run"), max_steps=25, batch_size=8, learning_rate=2e-3,
                          lr_warmup_steps=2, checkpoint_every=25, log_every=5, log_with="none", seed=0,
                          mixed_precision="bf16", class_names=list(pipe.config.class_names))
    tr = trainer(config, pipe, data, show_progress=False)
    assert tr.accelerator.device.type == torch.device(DEVICE).type
    batcher = LatentBatcher(data, list(pipe.config.class_names), pipe.vae, "both", "{}", 0.1, cache=True)
    batch = batcher.make_batch(list(range(8)), step_generator(0, 0))
    assert batch.mask_latents.device.type == torch.device(DEVICE).type

    def fixed_loss():
        with torch.no_grad():
            return diffusion_loss(pipe, pipe.unet, pipe.text_pathway, batch, step_generator(123, 0), 0.5).item()

    before = fixed_loss()
    tr.train()
    after = fixed_loss()
    assert np.isfinite(after) and after < 0.7 * before, (before, after)
    assert _on_device(pipe.unet)
    assert (tmp_path / "run" / "checkpoints" / "step-00000025").is_dir()
    # the loss lines' peak memory (MiB): on CUDA at least the U-Net's weights and at most torch.cuda's peak now;
    # on a CPU no memory fields
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    lines = [line for line in lines if "loss" in line]
    assert lines
    if torch.device(DEVICE).type != "cuda":
        assert all(line.keys() == {"step", "loss", "lr"} for line in lines), lines
        return
    weights_mib = sum(p.numel() * p.element_size() for p in pipe.unet.parameters()) // 2**20
    peak = [(line["memory_mib"], line["memory_reserved_mib"]) for line in lines]
    assert all(weights_mib <= used <= reserved for used, reserved in peak), (weights_mib, peak)
    assert all(a <= b for p, q in zip(peak, peak[1:]) for a, b in zip(p, q))  # peaks since the start: only grow
    assert peak[-1][0] <= torch.cuda.max_memory_allocated() // 2**20
    assert peak[-1][1] <= torch.cuda.max_memory_reserved() // 2**20


def test_compiled_speedups_keep_outputs(tiny_pipe):
    tiny_pipe.to(DEVICE)
    images = _images()
    eager = _run(tiny_pipe, images, prompt="circle", ensemble_size=2, num_inference_steps=2)
    tiny_pipe.enable_speedups(compile=True)
    compiled = _run(tiny_pipe, images, prompt="circle", ensemble_size=2, num_inference_steps=2)
    again = _run(tiny_pipe, images, prompt="circle", ensemble_size=2, num_inference_steps=2)
    torch.testing.assert_close(compiled.probabilities, eager.probabilities, atol=1e-2, rtol=0)
    torch.testing.assert_close(again.probabilities, compiled.probabilities, atol=1e-5, rtol=0)
