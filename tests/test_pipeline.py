"""DiGSegPipeline: outputs, modes, determinism, save/load, input handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from digseg import DiGSegPipeline
from digseg.errors import DigsegError
from training_helpers import generator


def test_binary_output_shapes_and_uncertainty(tiny_pipe):
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    out = tiny_pipe(images, prompt="circle", ensemble_size=3, num_inference_steps=2, batch_size=2,
                    generator=generator())
    assert out.labels.shape == (2, 64, 64) and out.labels.dtype == np.int64
    assert set(np.unique(out.labels)) <= {0, 1}
    assert out.probabilities.shape == (2, 2, 64, 64)
    np.testing.assert_allclose(out.probabilities.sum(1), 1.0, atol=1e-5)
    assert out.uncertainty.shape == (2, 64, 64) and (out.uncertainty >= 0).all() and out.uncertainty.max() > 0
    assert out.class_names == ["background", "circle"]
    np.testing.assert_array_equal(out.labels, (out.probabilities[:, 1] > 0.5).astype(np.int64))


def test_palette_and_per_class_modes(tiny_pipe):
    image = Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8))
    palette = tiny_pipe(image, generator=generator(), output_type="pt")
    assert palette.class_names == ["background", "circle", "square", "triangle"]
    assert palette.probabilities.shape == (1, 4, 40, 56) and palette.uncertainty is None
    assert torch.equal(palette.labels, palette.probabilities.argmax(1))
    same = tiny_pipe(image, classes=["background", "circle", "square", "triangle"], generator=generator(),
                     output_type="pt")
    assert torch.equal(same.labels, palette.labels)  # own class list = palette mode
    open_vocab = tiny_pipe(image, classes=["cat", "road", "sky"], generator=generator())
    assert open_vocab.probabilities.shape == (1, 3, 40, 56)
    np.testing.assert_array_equal(open_vocab.labels, open_vocab.probabilities.argmax(1))
    none = tiny_pipe(image, classes=["cat", "road"], no_class_threshold=1.01, generator=generator())
    assert (none.labels == 255).all()


def test_generator_determinism(tiny_pipe):
    image = torch.rand(3, 64, 64)
    a = tiny_pipe(image, prompt="square", generator=generator(1)).probabilities
    b = tiny_pipe(image, prompt="square", generator=generator(1)).probabilities
    c = tiny_pipe(image, prompt="square", generator=generator(2)).probabilities
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)



def test_given_noise_replaces_the_draw(tiny_pipe):
    image = torch.rand(3, 64, 64)
    drawn = tiny_pipe(image, prompt="square", ensemble_size=2, generator=generator(1)).probabilities
    noise = [torch.randn((1, 2, 4, 16, 16), generator=generator(1)).numpy()]  # [views, E, C, h, w]
    np.testing.assert_array_equal(tiny_pipe(image, prompt="square", ensemble_size=2, noise=noise).probabilities, drawn)
    with pytest.raises(DigsegError, match="views need"):
        tiny_pipe(image, prompt="square", noise=[np.zeros((1, 1, 4, 8, 8))])

def test_resize_back_to_input_size(tiny_pipe):
    out = tiny_pipe(torch.rand(3, 50, 90), prompt="circle", processing_resolution=64, generator=generator())
    assert out.labels.shape == (1, 50, 90)
    mixed = tiny_pipe([torch.rand(3, 30, 30), torch.rand(3, 64, 48)], prompt="circle", generator=generator())
    assert [lab.shape for lab in mixed.labels] == [(30, 30), (64, 48)]


def test_save_and_load_reproduce_predictions_bit_for_bit(tiny_pipe, tmp_path):
    with torch.no_grad():  # make the model differ from its initialisation, so loading has something to restore
        for p in tiny_pipe.text_pathway.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        tiny_pipe.unet.conv_in.weight.mul_(1.5)
    image = torch.rand(3, 64, 64)
    kwargs = dict(ensemble_size=2, num_inference_steps=2)
    before_binary = tiny_pipe(image, prompt="triangle", generator=generator(7), **kwargs)
    before_palette = tiny_pipe(image, generator=generator(7), **kwargs)
    tiny_pipe.save_pretrained(tmp_path / "model")
    loaded = DiGSegPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.class_names == tiny_pipe.config.class_names
    after_binary = loaded(image, prompt="triangle", generator=generator(7), **kwargs)
    after_palette = loaded(image, generator=generator(7), **kwargs)
    np.testing.assert_array_equal(after_binary.probabilities, before_binary.probabilities)
    np.testing.assert_array_equal(after_palette.probabilities, before_palette.probabilities)
    np.testing.assert_array_equal(after_palette.uncertainty, before_palette.uncertainty)
    assert (tmp_path / "model" / "text_pathway" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="a", classes=["b"]), "either prompt or classes"),
        (dict(prompt=""), "empty prompt"),
        (dict(prompt="   "), "empty prompt"),
        (dict(classes=[]), "classes is empty"),
        (dict(prompt="a", ensemble_size=0), "ensemble_size"),
        (dict(prompt=["a", "b"]), "2 prompts for 1 images"),
        (dict(prompt="a", output_type="pil"), "output_type"),
    ],
)
def test_bad_arguments(tiny_pipe, kwargs, message):
    with pytest.raises(DigsegError, match=message):
        tiny_pipe(torch.rand(3, 64, 64), **kwargs)


def test_bad_images(tiny_pipe, tmp_path):
    with pytest.raises(DigsegError, match="values in \\[0, 1\\]"):
        tiny_pipe(torch.rand(3, 8, 8) * 5, prompt="a")
    with pytest.raises(DigsegError, match="NaN"):
        tiny_pipe(torch.full((3, 8, 8), float("nan")), prompt="a")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DigsegError, match="broken.png"):
        tiny_pipe(str(bad), prompt="a")


def test_missing_model_folder(tmp_path):
    with pytest.raises(DigsegError, match="model folder not found"):
        DiGSegPipeline.from_pretrained(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DigsegError, match="model_index.json is missing"):
        DiGSegPipeline.from_pretrained(tmp_path / "empty")


def test_channels_last_keeps_outputs(tiny_pipe):
    image = torch.rand(3, 64, 64)
    before = tiny_pipe(image, prompt="circle", ensemble_size=2, generator=generator(4)).probabilities
    after = tiny_pipe.enable_speedups(channels_last=True)(image, prompt="circle", ensemble_size=2,
                                                          generator=generator(4)).probabilities
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_combine_member_latents_median_and_mean():
    from digseg.pipelines.latent_segmentation import combine_member_latents

    z = torch.randn(2, 5, 4, 3, 3)
    torch.testing.assert_close(combine_member_latents(z, "median"), z.median(dim=1).values)  # odd E: the middle one
    torch.testing.assert_close(combine_member_latents(z, "mean"), z.mean(dim=1))
    pair = z[:, :2]
    torch.testing.assert_close(combine_member_latents(pair, "median"), pair.mean(dim=1))  # E = 2: the mean
    four = z[:, :4]
    middle = four.sort(dim=1).values[:, 1:3].mean(dim=1)
    torch.testing.assert_close(combine_member_latents(four, "median"), middle)
    outlier = z[:, :3].clone()
    outlier[:, 0] = 1e6  # one wild member moves the mean, not the median
    assert combine_member_latents(outlier, "median").abs().max() < 1e3 < combine_member_latents(outlier, "mean").abs().max()


def test_ensemble_reduction_is_an_option(tiny_pipe):
    image = torch.rand(3, 64, 64)
    median = tiny_pipe(image, prompt="square", ensemble_size=3, generator=generator(5))
    mean = tiny_pipe(image, prompt="square", ensemble_size=3, generator=generator(5), ensemble_reduction="mean")
    assert not np.array_equal(median.probabilities, mean.probabilities)
    with pytest.raises(DigsegError, match="ensemble_reduction"):
        tiny_pipe(image, prompt="square", ensemble_size=3, ensemble_reduction="max")


def test_latent_median_ensemble_and_per_member_decode(tiny_pipe):
    image = torch.rand(3, 64, 64)
    median = tiny_pipe(image, prompt="square", ensemble_size=3, generator=generator(5))  # the default reduction
    each = tiny_pipe(image, prompt="square", ensemble_size=3, generator=generator(5), decode_members=True)
    assert median.probabilities.shape == each.probabilities.shape == (1, 2, 64, 64)
    assert median.uncertainty.shape == each.uncertainty.shape == (1, 64, 64)
    assert not np.array_equal(median.probabilities, each.probabilities)  # two different reductions
    single = tiny_pipe(image, prompt="square", ensemble_size=1, generator=generator(5), decode_members=True)
    one = tiny_pipe(image, prompt="square", ensemble_size=1, generator=generator(5))
    np.testing.assert_array_equal(single.probabilities, one.probabilities)  # E = 1: the same path
