"""open_clip text encoders (optional extra), with tiny random models built offline.

Two tower kinds: open_clip's built-in CLIP text transformer, and an HF text tower (BiomedCLIP's kind: a BERT +
MLP projection) built from a tiny local BertConfig + tokenizer folder. Skipped where open_clip is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from digseg.errors import DigsegError
from digseg.models.open_clip_text import OpenCLIPPromptEncoder, import_open_clip

try:  # plain `import open_clip` needs torchvision; import_open_clip() does not
    import_open_clip()
except DigsegError:
    pass
open_clip = pytest.importorskip("open_clip")

EMBED_DIM = 24  # joint embedding width D (differs from the text widths, so the projection is exercised)
CONTEXT = 16
VISION_CFG = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
CLIP_TEXT_CFG = {"context_length": CONTEXT, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}
WORDS = "a an the photo of cat dog tumor gland nucleus cell tissue background stroma".split()
PROMPTS = ["a photo of a cat", "the dog", "a photo of a cat", "tumor gland"]
TORCHVISION_INSTALLED = importlib.util.find_spec("torchvision") is not None


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.fixture(scope="module")
def clip_model():
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=EMBED_DIM, vision_cfg=VISION_CFG, text_cfg=CLIP_TEXT_CFG).eval()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny random BERT (config only: open_clip builds it with AutoModel.from_config) + WordPiece tokenizer."""
    from transformers import BertConfig, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(vocab_file=str(vocab)).save_pretrained(folder)
    BertConfig(
        vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=CONTEXT, pad_token_id=0,
    ).save_pretrained(folder)
    return folder


def _hf_text_cfg(bert_dir) -> dict:
    return {
        "hf_model_name": str(bert_dir), "hf_tokenizer_name": str(bert_dir), "hf_proj_type": "mlp",
        "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": CONTEXT,
    }


@pytest.fixture(scope="module")
def hf_model(bert_dir):
    torch.manual_seed(0)
    text_cfg = {**_hf_text_cfg(bert_dir), "hf_model_pretrained": False}
    return open_clip.CustomTextCLIP(embed_dim=EMBED_DIM, vision_cfg=VISION_CFG, text_cfg=text_cfg).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(bert_dir):
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(str(bert_dir), context_length=CONTEXT)


def test_clip_tower_shapes_and_pooled_token_matches_encode_text(clip_model):
    encoder = OpenCLIPPromptEncoder(clip_model, open_clip.SimpleTokenizer(context_length=CONTEXT))
    assert encoder.kind == "clip" and encoder.hidden_size == EMBED_DIM
    assert not any(p.requires_grad for p in clip_model.parameters()) and not clip_model.training
    states = encoder.encode(PROMPTS)
    assert states.shape == (len(PROMPTS), CONTEXT, EMBED_DIM) and states.dtype == torch.float32

    ids = encoder.tokenizer(PROMPTS)
    with torch.no_grad():
        pooled = clip_model.encode_text(ids, normalize=False)  # open_clip's own text embedding [N, D]
    eot = states[torch.arange(len(PROMPTS)), ids.argmax(dim=-1)]  # CLIP pools at the EOT token
    torch.testing.assert_close(eot, pooled, rtol=1e-5, atol=1e-5)


def test_hf_tower_shapes_and_cls_token_matches_encode_text(hf_model, hf_tokenizer):
    encoder = OpenCLIPPromptEncoder(hf_model, hf_tokenizer)
    assert encoder.kind == "hf" and encoder.hidden_size == EMBED_DIM
    states = encoder.encode(PROMPTS)
    assert states.shape == (len(PROMPTS), CONTEXT, EMBED_DIM)
    with torch.no_grad():
        pooled = hf_model.encode_text(hf_tokenizer(PROMPTS), normalize=False)
    torch.testing.assert_close(states[:, 0], pooled, rtol=1e-5, atol=1e-5)  # CLS pooler -> token 0


@pytest.mark.parametrize("kind", ["clip", "hf"])
def test_cache_runs_the_tower_once_per_prompt(kind, clip_model, hf_model, hf_tokenizer):
    model, tokenizer = (clip_model, open_clip.SimpleTokenizer(context_length=CONTEXT)) if kind == "clip" \
        else (hf_model, hf_tokenizer)
    encoder = OpenCLIPPromptEncoder(model, tokenizer)
    calls = _count_calls(encoder.tower.transformer)
    first = encoder.encode(PROMPTS)
    assert calls[0] == 1
    torch.testing.assert_close(first[0], first[2])
    again = encoder.encode(["the dog", "tumor gland", "the dog"])
    assert calls[0] == 1
    torch.testing.assert_close(again[0], first[1])
    encoder.clear_cache()
    encoder.encode(["the dog"])
    assert calls[0] == 2


@pytest.mark.parametrize("prompt", ["", "   ", None])
def test_empty_prompt_is_a_digseg_error(prompt, clip_model):
    encoder = OpenCLIPPromptEncoder(clip_model, open_clip.SimpleTokenizer(context_length=CONTEXT))
    with pytest.raises(DigsegError, match="empty prompt"):
        encoder.encode(["a cat", prompt])


def _save_local_dir(folder, model, model_cfg):
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")


def test_from_pretrained_local_dir_clip(tmp_path, clip_model):
    folder = tmp_path / "tiny-clip"
    _save_local_dir(folder, clip_model, {"embed_dim": EMBED_DIM, "vision_cfg": VISION_CFG, "text_cfg": CLIP_TEXT_CFG})
    loaded = OpenCLIPPromptEncoder.from_pretrained(f"local-dir:{folder}")
    assert loaded.kind == "clip" and not hasattr(loaded.model, "visual")  # text tower only
    reference = OpenCLIPPromptEncoder(clip_model, open_clip.SimpleTokenizer(context_length=CONTEXT))
    torch.testing.assert_close(loaded.encode(PROMPTS), reference.encode(PROMPTS))


def test_from_pretrained_local_dir_biomedclip_like_without_timm(tmp_path, bert_dir, hf_model, hf_tokenizer):
    """BiomedCLIP's config names a timm vision tower; only the text tower is built, so timm is not needed."""
    folder = tmp_path / "tiny-biomedclip"
    vision_cfg = {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                  "timm_proj": "linear", "image_size": 224}
    model_cfg = {"embed_dim": EMBED_DIM, "vision_cfg": vision_cfg, "text_cfg": _hf_text_cfg(bert_dir)}
    _save_local_dir(folder, hf_model, model_cfg)
    for name in ("vocab.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        if (bert_dir / name).is_file():  # get_tokenizer("local-dir:...") reads the tokenizer from that folder
            (folder / name).write_bytes((bert_dir / name).read_bytes())
    loaded = OpenCLIPPromptEncoder.from_pretrained(f"local-dir:{folder}")
    assert loaded.kind == "hf" and loaded.hidden_size == EMBED_DIM
    torch.testing.assert_close(loaded.encode(PROMPTS), OpenCLIPPromptEncoder(hf_model, hf_tokenizer).encode(PROMPTS))


@pytest.mark.parametrize("name", ["hf-hub:nobody-xyz/no-such-model", "No-Such-Model", "local-dir:/no/such/dir"])
def test_from_pretrained_failure_is_one_line_digseg_error(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DigsegError) as info:
        OpenCLIPPromptEncoder.from_pretrained(name)
    assert "\n" not in str(info.value)


def test_not_an_open_clip_model_is_rejected():
    with pytest.raises(DigsegError, match="not an open_clip"):
        OpenCLIPPromptEncoder(torch.nn.Linear(2, 2), tokenizer=None)


@pytest.mark.skipif(TORCHVISION_INSTALLED, reason="the stubs are only used where torchvision is absent")
def test_torchvision_stubs_are_removed_after_import():
    import transformers.utils

    assert "torchvision" not in sys.modules
    assert not any(name.startswith("torchvision.") for name in sys.modules)
    assert importlib.util.find_spec("torchvision") is None
    assert transformers.utils.is_torchvision_available() is False
    with pytest.raises(RuntimeError, match="placeholder"):
        open_clip.transform.Normalize(mean=(0.5,), std=(0.5,))  # image transforms stay unusable, loudly


@pytest.mark.skipif(TORCHVISION_INSTALLED, reason="the stubs are only used where torchvision is absent")
def test_fresh_interpreter_open_clip_first_then_transformers():
    """open_clip imported before anything else: transformers still sees no torchvision afterwards."""
    code = (
        "import sys\n"
        "from digseg.models.open_clip_text import import_open_clip\n"
        "import_open_clip()\n"
        "assert 'torchvision' not in sys.modules\n"
        "import transformers.utils\n"
        "assert transformers.utils.is_torchvision_available() is False\n"
        "from transformers import CLIPTextModel\n"
        "import diffusers\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_pipeline_with_an_open_clip_text_tower_round_trips(tmp_path, clip_model, tiny_backbone):
    """`text_encoder="open_clip:<name>"`: the model saves the name and re-creates the tower on load."""
    import numpy as np

    from digseg import DiGSegPipeline

    folder = tmp_path / "oc"
    _save_local_dir(folder, clip_model, {"embed_dim": EMBED_DIM, "vision_cfg": VISION_CFG, "text_cfg": CLIP_TEXT_CFG})
    pipe = DiGSegPipeline.from_backbone(tiny_backbone, class_names=["background", "nucleus"],
                                        text_encoder=f"open_clip:local-dir:{folder}")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.text_pathway.config.encoder_dim == EMBED_DIM and pipe.text_encoder is None
    image = torch.rand(3, 64, 64)
    before = pipe(image, prompt="nucleus", generator=torch.Generator().manual_seed(0)).probabilities
    pipe.save_pretrained(tmp_path / "model")
    loaded = DiGSegPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.open_clip_text_encoder == f"local-dir:{folder}"
    after = loaded(image, prompt="nucleus", generator=torch.Generator().manual_seed(0)).probabilities
    # same weights; not bit-for-bit on every CPU (2e-6 apart on an AMD EPYC: kernels chosen per allocation)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)
