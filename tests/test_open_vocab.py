"""Open vocabulary: exact per-class path, the pruned fast path and its bound, templates, synonyms, encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from digseg import DiGSegPipeline
from digseg.cli import main
from digseg.data.io import read_class_list
from digseg.errors import DigsegError
from digseg.models.tiny import tiny_text_encoder, tiny_tokenizer
from digseg.pipelines.prompts import ENSEMBLE_TEMPLATES, class_prompts, resolve_templates, synonyms
from training_helpers import generator

NAMES = ["cat", "road", "sky", "tree", "person"]


@pytest.fixture
def trained_like(tiny_pipe):
    """The tiny pipeline with its text pathway perturbed, so different class names give clearly different maps."""
    with torch.no_grad():
        for p in tiny_pipe.text_pathway.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return tiny_pipe


def test_label_map_over_n_classes_is_argmax_of_single_class_queries(trained_like):
    image = torch.rand(3, 64, 64)
    joint = trained_like(image, classes=NAMES, generator=generator(3), num_inference_steps=2, ensemble_size=2)
    singles = [trained_like(image, prompt=name, generator=generator(3), num_inference_steps=2, ensemble_size=2)
               .probabilities[0, 1] for name in NAMES]
    scores = np.stack(singles)  # [N, H, W], one class at a time
    np.testing.assert_allclose(joint.probabilities[0], scores, atol=1e-5)
    agree = (joint.labels[0] == scores.argmax(0)).mean()
    assert agree > 0.999, agree  # equal up to float ties


def test_fast_path_without_pruning_equals_exact(trained_like):
    image = torch.rand(3, 64, 64)
    exact = trained_like(image, classes=NAMES, generator=generator(1))
    fast = trained_like(image, classes=NAMES, generator=generator(1), top_k=len(NAMES))
    np.testing.assert_array_equal(fast.labels, exact.labels)


def test_fast_path_agrees_wherever_the_exact_class_was_kept(trained_like):
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    exact = trained_like(images, classes=NAMES, generator=generator(2), batch_size=2)
    fast = trained_like(images, classes=NAMES, generator=generator(2), batch_size=2, top_k=2)
    for i in range(2):
        kept = np.flatnonzero(fast.probabilities[i].reshape(len(NAMES), -1).max(1) > 0)
        assert len(kept) <= 2
        for c in kept:  # kept classes: exactly the exact path's scores
            np.testing.assert_allclose(fast.probabilities[i, c], exact.probabilities[i, c], atol=1e-5)
        covered = np.isin(exact.labels[i], kept)
        assert (fast.labels[i][covered] == exact.labels[i][covered]).mean() > 0.999  # equal up to float ties
        assert set(np.unique(fast.labels[i])) <= set(kept.tolist())


def test_class_relevance_ranks_every_class(trained_like):
    states = trained_like.query_states([[n] for n in NAMES])
    z = torch.randn(2, 4, 16, 16)
    relevance = trained_like.class_relevance(z, states, torch.randn(2, 4, 16, 16))
    assert relevance.shape == (2, len(NAMES)) and torch.isfinite(relevance).all()
    assert trained_like.level_context.record is None  # recording switched off again


def test_large_vocabulary_runs_in_bounded_chunks(trained_like):
    names = [f"thing {i}" for i in range(300)]
    out = trained_like(torch.rand(3, 64, 64), classes=names, top_k=4, max_unet_batch=16, generator=generator(),
                       max_probability_classes=None)  # every class's probabilities, on request
    assert out.probabilities.shape == (1, 300, 64, 64)
    assert (out.probabilities[0].reshape(300, -1).max(1) > 0).sum() <= 4
    kept = trained_like(torch.rand(3, 64, 64), classes=names, top_k=4, max_unet_batch=16, generator=generator())
    assert kept.probabilities.shape == (1, 16, 64, 64)  # by default: the 16 best classes only
    assert set(np.unique(kept.labels)) <= set(kept.probability_class_ids[0].tolist())  # <= 4 classes can win


def test_templates_and_synonyms(trained_like):
    assert synonyms("wall, walls,  wall ") == ["wall", "walls"]
    assert class_prompts("cup, mug", ["a {}.", "{}"]) == ["a cup.", "a mug.", "cup", "mug"]
    assert resolve_templates("ensemble", "{}") == list(ENSEMBLE_TEMPLATES) and len(ENSEMBLE_TEMPLATES) >= 10
    assert resolve_templates(None, "a photo of a {}.") == ["a photo of a {}."]
    with pytest.raises(DigsegError, match="must contain"):
        resolve_templates(["no placeholder"], "{}")
    with pytest.raises(DigsegError, match="empty class name"):
        synonyms(" , ")
    # a class with synonyms is conditioned on the mean of its variants' features
    both = trained_like.text_pathway(trained_like.query_states([["circle", "circles"]]))
    one, two = trained_like.text_pathway(trained_like.query_states([["circle"], ["circles"]]))[0]
    torch.testing.assert_close(both[0][0], (one + two) / 2)
    out = trained_like(torch.rand(3, 64, 64), classes=["cup, mug", "sky"], templates="ensemble", generator=generator())
    assert out.probabilities.shape == (1, 2, 64, 64)


def test_other_clip_text_encoder_width(tiny_backbone, tmp_path):
    tokenizer = tiny_tokenizer()
    encoder = tiny_text_encoder(tokenizer, hidden_size=16, seed=5)
    encoder.save_pretrained(tmp_path / "clip16")
    tokenizer.save_pretrained(tmp_path / "clip16")
    pipe = DiGSegPipeline.from_backbone(tiny_backbone, class_names=["background", "circle"], text_encoder=tmp_path / "clip16")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.text_pathway.config.encoder_dim == 16 and pipe.text_pathway.config.cross_attention_dim == 32
    before = pipe(torch.rand(3, 64, 64), classes=NAMES[:3], generator=generator()).probabilities
    pipe.save_pretrained(tmp_path / "model")
    loaded = DiGSegPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.text_encoder.config.hidden_size == 16
    with pytest.raises(DigsegError, match="text encoder folder not found"):
        DiGSegPipeline.from_backbone(tiny_backbone, text_encoder=tmp_path / "missing")
    assert before.shape == (1, 3, 64, 64)


def test_predict_with_a_classes_file(tiny_pipe, tmp_path, capsys):
    tiny_pipe.save_pretrained(tmp_path / "model")
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    names = [f"class {i}" for i in range(40)] + ["wall, walls"]
    (tmp_path / "classes.txt").write_text("# a comment\n" + "\n".join(names) + "\n\n")
    assert read_class_list(tmp_path / "classes.txt") == names
    assert main(["predict", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "x.png"), "--classes-file",
                 str(tmp_path / "classes.txt"), "--top-k", "3", "--output", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["images"]["x.png"]
    assert 1 <= len(summary) <= 3 and set(summary) <= set(names)
    assert main(["predict", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "x.png"), "--classes-file",
                 str(tmp_path / "none.txt"), "--output", str(tmp_path / "out")]) == 2
    assert "none.txt" in capsys.readouterr().err
