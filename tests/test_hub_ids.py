"""Hub ids: one rule says which names are Hub ids, and an id that is neither in the local cache nor on a reachable
Hub fails in one line, at once (no minute of retries), naming the id and why."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from digseg.cli import main
from digseg.errors import DigsegError
from digseg.hub_ids import check_hub_id, hub_id_or_none, looks_like_hub_id
from training_helpers import error_line, free_port

HUB_ID = "some-org/some-model"


@pytest.mark.parametrize("name, canonical, expected", [
    ("org/name", False, True), ("org/name", True, True), ("stabilityai/stable-diffusion-2-base", False, True),
    ("name", False, False), ("scene_parse_150", True, True), ("a/b/c", False, False), ("a/b/c", True, False),
    ("./org/name", False, False), ("/org/name", False, False), ("~/models", False, False), ("org/", False, False),
    ("my models/sd", False, False), ("C:/models", False, False), ("org--x/name", False, False),
])
def test_one_rule_says_what_is_a_hub_id(name, canonical, expected):
    assert looks_like_hub_id(name, canonical=canonical) is expected


def test_a_folder_that_exists_is_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub_id_or_none("org/name") == "org/name"
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert hub_id_or_none("org/name") is None and hub_id_or_none(None) is None


@pytest.fixture
def empty_offline_hub(tmp_path, monkeypatch):
    """Offline mode and a fresh, empty Hugging Face cache (set for this process and for the library)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


def _assert_offline_line(line: str, hub_id: str = HUB_ID) -> None:
    assert repr(hub_id) in line and "Hub id" in line, line
    assert "not in the local cache" in line and "offline" in line and "local" in line, line


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    return path


def test_every_command_names_an_uncached_hub_id_offline_in_one_line_without_retrying(
        empty_offline_hub, tiny_backbone, image, tmp_path, capsys, monkeypatch):
    pytest.importorskip("gradio")
    data = tmp_path / "data"
    from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder

    save_scenes_as_folder(SyntheticScenes(2, seed=0), data)
    out = str(tmp_path / "out")
    commands = {
        "train": ["train", "--pretrained", HUB_ID, "--cfg-options", "data.num_scenes=2", "--max-steps", "1",
                  "--output", out],
        "train model.text_encoder": ["train", "--pretrained", str(tiny_backbone), "--max-steps", "1", "--output", out,
                                     "--cfg-options", "model.text_encoder=org/clip", "data.num_scenes=2"],
        "cache-latents": ["cache-latents", "--pretrained", HUB_ID, "--cfg-options", "data.num_scenes=2",
                          "data.augmentation=false",
                          "--output", out],
        "predict": ["predict", "--model", HUB_ID, "--image", str(image), "--prompt", "cup", "--output", out],
        "eval": ["eval", "--model", HUB_ID, "--dataset", "folder", "--data-root", str(data), "--val-fraction", "1",
                 "--output", f"{out}/eval"],
        "train-mask-decoder": ["train-mask-decoder", "--model", HUB_ID, "--num-scenes", "2", "--output", out],
        "demo": ["demo", "--model", HUB_ID],
    }
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)  # a retry loop waits between its tries
    for name, argv in commands.items():
        assert main(argv) == 2, name
        _assert_offline_line(error_line(capsys), "org/clip" if "text_encoder" in name else HUB_ID)
        assert sum(slept) < 1, (name, slept)
    assert not any(empty_offline_hub.rglob("*.json"))  # nothing was fetched


def test_an_open_clip_hub_id_offline_is_named_in_one_line(empty_offline_hub):
    from digseg.models.open_clip_text import OpenCLIPPromptEncoder

    with pytest.raises(DigsegError) as info:
        OpenCLIPPromptEncoder.from_pretrained(f"hf-hub:{HUB_ID}")
    _assert_offline_line(str(info.value))
    assert "local-dir:" in str(info.value) and "\n" not in str(info.value)


def test_a_cached_hub_id_passes_offline(empty_offline_hub, tiny_pipe):
    sha = "1" * 40
    repo = empty_offline_hub / "models--org--tiny"
    tiny_pipe.save_pretrained(repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    check_hub_id("org/tiny", "DiGSeg model", "model_index.json", "a local DiGSeg model folder")
    with pytest.raises(DigsegError, match="not in the local cache"):  # cached, but not at that revision
        check_hub_id("org/tiny", "DiGSeg model", "model_index.json", "a local folder", revision="2" * 40)
    from digseg import DiGSegPipeline

    assert DiGSegPipeline.from_pretrained("org/tiny").config.class_names == tiny_pipe.config.class_names


# ------------------------------------------------------------------------------------ not offline: one request
# the command, with time.sleep counted instead of slept: a retry loop (diffusers' waits about 50 s in all) shows as
# the seconds it asked to wait
_COUNTED_SLEEP_MAIN = ("import sys, time; slept = []; time.sleep = slept.append; from digseg.cli import main; "
                       "status = main(sys.argv[1:]); print(f'slept {sum(slept):.2f}', file=sys.stderr); sys.exit(status)")


def _run_cli(argv: list[str], endpoint: str, tmp_path) -> tuple[str, float]:
    """The command in a fresh process (huggingface_hub reads HF_ENDPOINT at import): its error line, and the
    seconds it asked to sleep (waits between retries)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": endpoint,
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", _COUNTED_SLEEP_MAIN, *argv], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    slept = float(next(line for line in result.stderr.splitlines() if line.startswith("slept ")).split()[1])
    return errors[0], slept


def test_an_unreachable_hub_fails_at_once_not_after_retries(image, tmp_path):
    """Without offline mode, a Hub that refuses connections: diffusers alone retries for about 50 s."""
    line, slept = _run_cli(["predict", "--model", HUB_ID, "--image", str(image), "--prompt", "cup",
                            "--output", str(tmp_path / "out")], f"http://127.0.0.1:{free_port()}", tmp_path)
    assert repr(HUB_ID) in line and "not in the local cache" in line and "cannot be reached" in line, line
    assert slept < 1, slept


class _NoSuchRepo(http.server.BaseHTTPRequestHandler):
    """A Hub that has no repositories: every request answers 404 RepoNotFound, as huggingface.co does."""

    def _answer(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("X-Error-Message", "Repository not found")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = _answer

    def log_message(self, *args) -> None:
        pass


def test_a_repository_the_hub_does_not_have_is_named(tiny_backbone, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchRepo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        line, slept = _run_cli(["train", "--pretrained", HUB_ID, "--cfg-options", "data.num_scenes=2", "--max-steps", "1",
                                  "--output", str(tmp_path / "run")], f"http://127.0.0.1:{server.server_port}", tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert "Stable Diffusion backbone" in line and "has no repository" in line and repr(HUB_ID) in line, line
    assert slept < 1, slept
