"""Shared fixtures: a tiny Stable Diffusion folder (written by diffusers' own save_pretrained) and pipelines."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=UserWarning, module="transformers")

from digseg.models.tiny import save_tiny_backbone  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """A random tiny SD folder: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/."""
    return save_tiny_backbone(tmp_path_factory.mktemp("backbone") / "tiny-sd", seed=0)


@pytest.fixture
def tiny_pipe(tiny_backbone):
    """A fresh (untrained) DiGSeg pipeline over the synthetic classes."""
    from training_helpers import fresh_pipe

    return fresh_pipe(tiny_backbone)
