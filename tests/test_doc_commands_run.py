"""Every `digseg` command shown in README.md and docs/*.md (found by tests/test_doc_commands.py) runs as written, in
process (`digseg.cli.main`), on tiny fixtures, and exits 0: a renamed flag, a wrong config key, a missing config
file, a dataset or path the command cannot read, or a command that needs an earlier command's output fails here,
not for a reader.

Each doc's commands run in the doc's order, in a working folder of the doc's own (holding `configs/`), as a reader
runs them: relative paths land there, and a later command reads what an earlier one wrote (`runs/mine`,
`qs1/model`, `cache/mine-512`). A command shown again (in any doc) runs once, the first time. `_runnable` adapts
paths and sizes only:

- What a reader brings is written where the command names it: a --data-root in the official layout of the
  command's dataset (tests/layouts.py; `folder`: synthetic scenes), an `hf:` dataset (tests/hf_fixtures.py, saved
  with the column names the command reads; a Hub id: at that path), --image files, folders and patterns,
  --image-list files (naming a command's several adapters in turn) and --split-file files, and a --model /
  --pretrained / resumed run folder that no earlier command of the doc wrote (the one an earlier doc trained at
  that path, e.g. README's runs/ade20k_150, else a tiny run trained once).
- Hub backbones and PATH_OR_ID -> a tiny backbone (with fp16 weight files too, for `model.variant=fp16`), also
  where a config names them; absolute paths -> the same path under the doc's folder; shell variables -> a value.
- Sizes -> small: steps, crops, batches, windows, ensembles, sample counts, the sizes a config file sets (through
  one more --cfg-options), the benchmarks' test scales and windows (1/16), `quickstart`'s settings.

Commands under `accelerate launch` / `torchrun` run as one process. SKIP lists the few that cannot run here.
About 45 s on 2 CPU cores (one torch thread).
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from digseg.cli import main
from digseg.cli.parser import build_parser
from digseg.hub_ids import looks_like_hub_id
from layouts import ade150, ade847, cityscapes, coco, deepglobe, monuseg, pascal, write_image
from test_doc_commands import ROOT, _documented_commands

# (a pattern of the documented arguments, why that command is not run)
SKIP = [
    (r"^demo\b", "starts a web server that serves until stopped (tests/test_demo_browser.py drives the app)"),
    (r"(^|\s)\.\.\.(\s|$)", "elided arguments ('...'): the doc shows the form of a line, not a command"),
    (r"run\.push_to_hub=", "uploads to the Hugging Face Hub: needs the network and a token"),
] + [(r"run\.log_with=.*wandb", "wandb, an optional tracker, is not installed")] * (find_spec("wandb") is None)
_SHELL = {"$DATA": "DATA", "${es%x*}": "1", "${es#*x}": "1", "$es": "1x1"}  # shell variables the docs use
_SMALL = {"--max-steps": "1", "--crop-size": "32", "--num": "2", "--num-scenes": "8", "--processing-resolution": "32",
          "--window-size": "32", "--stride": "16"}
_CONFIG_SIZES = {  # the sizes a config file sets -> (the flag that sets the field too, or None; a small value)
    "data.crop_size": ("--crop-size", "32"), "optim.max_steps": ("--max-steps", "1"),
    "optim.batch_size": ("--batch-size", "2"), "optim.gradient_accumulation_steps": (None, "1"),
    "data.num_workers": (None, "0"), "run.num_sample_images": (None, "1")}
_CONFIG_COMMANDS = {"train", "cache-latents", "browse-data", "check-data"}  # read a training config
_LAYOUTS = {  # the datasets the docs name -> a writer of train and val (and test) splits in the official layout
    "ade20k-150": lambda root: [ade150(root, split) for split in ("training", "validation")],
    "ade20k-847": lambda root: ade847(root, labels=((0, 846, 65535),)),  # one image: its 847 classes are queried one by one
    "pascal-context-59": lambda root: pascal(root, "pc59_val", ".png", [(0, 58, 255), (10, 20)], np.uint8),
    "pascal-context-459": lambda root: pascal(root, "pc459_val", ".tif", [(0, 458, 65535)], np.uint16),
    "coco-stuff-171": lambda root: [coco(root, split) for split in ("train2017", "val2017")],
    "cityscapes": lambda root: cityscapes(root, labelled=("train", "val")),
    "deepglobe-roads": lambda root: deepglobe(root, splits=("train", "valid")),
    "monuseg": monuseg,
}
FOLDER_SCENES = [0, 1, 2, 3, 4, 5, 50]  # a flat folder: the file-name hash holds out scene_00050 at the default 10%


RUNS = []  # (where, args) of each command the docs show, in their order, the first time it is shown
for _where, _args in _documented_commands():
    if all(_args != args for _, args in RUNS):
        RUNS.append((_where, _args))


class Fixtures:
    """The tiny inputs, made once, and a working folder per doc; `place_*` write an input where a command names it."""

    def __init__(self, base: Path):
        from digseg.models.tiny import save_tiny_backbone

        self.base, self.folders, self.outputs = base, {}, {}
        self.backbone = save_tiny_backbone(base / "backbone", seed=0, variants=(None, "fp16"))
        self.data = base / "my_data"
        self._folder_dataset(self.data)
        run = base / "run"
        argv = ["train", "--pretrained", str(self.backbone), "--dataset", "folder", "--data-root", str(self.data),
                "--crop-size", "32", "--max-steps", "1", "--batch-size", "2", "--output", str(run), "--cfg-options",
                "optim.gradient_accumulation_steps=1", "data.num_workers=0", "run.num_sample_images=1"]
        assert main(argv) == 0
        self.run = run

    @staticmethod
    def _folder_dataset(root: Path) -> None:
        from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder

        save_scenes_as_folder(SyntheticScenes(max(FOLDER_SCENES) + 1, size=32), root)
        for unused in set(range(max(FOLDER_SCENES))) - set(FOLDER_SCENES):
            for where in ("images", "masks"):
                (root / where / f"scene_{unused:05d}.png").unlink()

    def folder(self, doc: str) -> Path:
        if doc not in self.folders:
            self.folders[doc] = self.base / "docs" / doc
            self.folders[doc].mkdir(parents=True)
            (self.folders[doc] / "configs").symlink_to(ROOT / "configs")
            self.outputs[doc] = []
        return self.folders[doc]

    def place_data(self, root: Path, dataset: str) -> None:
        marker = root / f".fixture-{dataset}"
        if marker.exists():
            return
        if dataset == "ade20k-150" and root.name == "ADEChallengeData2016":  # the dataset's own folder as the root
            root = root.parent
        if dataset == "folder":
            self._folder_dataset(root)
        elif dataset in _LAYOUTS:
            _LAYOUTS[dataset](root)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def place_hf(self, path: Path, image_column: str, label_column: str) -> None:
        """tests/hf_fixtures.py's saved dataset (its columns renamed as the command reads them) or parquet file."""
        import datasets

        from hf_fixtures import CLASSES, write_hf_copies, write_pairs

        if path.exists():
            return
        if not (self.base / "hf").exists():
            write_hf_copies(write_pairs(self.base / "hf" / "pairs"), self.base / "hf")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            shutil.copy(self.base / "hf" / "train.parquet", path)
            return
        tables = datasets.load_from_disk(str(self.base / "hf" / "saved"))
        if (image_column, label_column) != ("image", "label"):
            tables = tables.rename_columns({"image": image_column, "label": label_column})
        tables.save_to_disk(str(path))
        (path / "classes.txt").write_text("\n".join(CLASSES) + "\n")

    def place_model(self, path: Path, doc: str) -> None:
        """A model (or run) folder that no earlier command of the doc wrote: the same folder of an earlier doc (a
        model trained as README says, e.g. runs/ade20k_150), else the tiny trained run."""
        written = any(path == out or out in path.parents for out in self.outputs[doc])
        if written or path.exists():
            return
        relative = path.relative_to(self.folders[doc])
        earlier = [f / relative for f in self.folders.values() if (f / relative / "model_index.json").exists()]
        shutil.copytree(earlier[0] if earlier else self.run, path)

    @staticmethod
    def place_images(value: str, folder: Path, adapters: list[str]) -> None:
        """An image file, a folder of two, a pattern's file, or a list of two (each line naming one of `adapters`
        after a tab, in turn, when the command names several)."""
        path = folder / value
        if "*" in value:  # a pattern: one file it matches
            path = folder / value.replace("**", "sub").replace("*", "image")
        if path.exists():
            return
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            write_image(path, seed=1, size=(40, 30))
        elif path.suffix == ".txt":  # an image list
            listed = [write_image(folder / "listed" / f"{i}.png", seed=i, size=(40, 30)) for i in range(2)]
            names = [f"\t{adapters[i % len(adapters)]}" if len(adapters) > 1 else "" for i in range(len(listed))]
            path.write_text("".join(f"{p}{name}\n" for p, name in zip(listed, names)))
        else:
            for i in range(2):
                write_image(path / f"image_{i}.jpg", seed=i, size=(40, 30))


def _config(argv: list[str], folder: Path):
    """The TrainConfig of the --config file a command names, or None."""
    from digseg.training.config import TrainConfig

    return TrainConfig.load(folder / argv[argv.index("--config") + 1]) if "--config" in argv else None


def _is_backbone_id(value: str, folder: Path) -> bool:
    return value == "PATH_OR_ID" or (looks_like_hub_id(value) and not (folder / value).exists())


def _runnable(args: str, doc: str, fx: Fixtures) -> list[str]:
    """The documented arguments with paths and sizes adapted (module docstring); writes the inputs they name."""
    folder = fx.folder(doc)
    for variable, value in _SHELL.items():
        args = args.replace(variable, value)
    argv = [str(folder / a.lstrip("/")) if a.startswith("/") else a for a in shlex.split(args)]  # absolute paths
    command, flags = argv[0], [a for a in argv if a.startswith("--")]
    config = _config(argv, folder)
    dataset = argv[argv.index("--dataset") + 1] if "--dataset" in argv else config and config.data.dataset
    options = {k: v for a in argv for k, _, v in [a.rpartition("=")] if "=" in a}  # --cfg-options and --hf pairs
    out, flag = [command], None
    for a in argv[1:]:
        if a.startswith("--"):
            flag = a
        elif flag == "--pretrained" and _is_backbone_id(a, folder):
            a = str(fx.backbone)
        elif flag in ("--pretrained", "--model") or (flag == "--output" and "latest" in argv):  # or --resume latest
            fx.place_model(folder / a, doc)
        elif flag == "--data-root":
            fx.place_data(folder / a, dataset)
        elif flag == "--dataset" and a.startswith("hf:"):
            hf = {k.rsplit(".", 1)[-1]: v for k, v in options.items()}
            fx.place_hf(folder / a[3:], hf.get("image_column", "image"), hf.get("label_column", "label"))
            if "classes_file" in hf and not (folder / hf["classes_file"]).exists():
                shutil.copy(fx.base / "hf" / "saved" / "classes.txt", folder / hf["classes_file"])
        elif flag in ("--image", "--image-list"):
            fx.place_images(a, folder, [v.partition("=")[0] for f, v in zip(argv, argv[1:]) if f == "--adapter"])
        elif flag == "--split-file" and not (folder / a).exists():
            stems = [f"scene_{i:05d}" for i in FOLDER_SCENES]  # a training list: four of them; another: the rest
            (folder / a).parent.mkdir(parents=True, exist_ok=True)
            (folder / a).write_text("\n".join(stems[:4] if "train" in a else stems[4:]) + "\n")
        elif flag in _SMALL:
            a = _SMALL[flag]
        elif flag == "--batch-size" and command == "train":
            a = "2"
        elif flag in ("--ensemble-size", "--steps"):
            a = str(min(int(a), 2))
        out.append(a)
    if command == "train-mask-decoder" and "--max-steps" not in flags:
        out += ["--max-steps", "1"]
    if command in _CONFIG_COMMANDS:
        extra = [f"{field}={value}" for field, (flag, value) in _CONFIG_SIZES.items()
                 if flag not in flags and field not in options]
        if dataset == "synthetic" and "data.num_scenes" not in options:
            extra.append("data.num_scenes=8")
        if config and "--pretrained" not in flags and _is_backbone_id(config.model.pretrained, folder):
            extra.append(f"model.pretrained={fx.backbone}")
        if config and config.model.text_encoder and _is_backbone_id(config.model.text_encoder, folder):
            extra.append(f"model.text_encoder={fx.backbone}")  # a Stable Diffusion folder: its text_encoder/
        out += ["--cfg-options", *extra]
    return out


def _small_protocol(protocol):
    import dataclasses

    small = {f: tuple(max(1, v // 16) for v in getattr(protocol, f)) for f in ("crop_size", "stride", "scale")
             if getattr(protocol, f)}
    return dataclasses.replace(protocol, **small)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread costs more than it gives, the more so on a busy machine
    yield Fixtures(tmp_path_factory.mktemp("doc-commands"))
    torch.set_num_threads(threads)


@pytest.mark.parametrize("where, args", RUNS, ids=[where for where, _ in RUNS])
def test_documented_command_runs(where, args, fixtures, monkeypatch, capsys):
    import digseg.cli.quickstart
    from digseg.evaluation import protocols
    from digseg.training.vae import train_tiny_vae

    reason = next((why for pattern, why in SKIP if re.search(pattern, args)), None)
    if reason:
        pytest.skip(reason)

    class TinyQuickstart(digseg.cli.quickstart.QuickstartSettings):  # the command's own settings train for minutes
        def __init__(self, seed: int = 0):
            super().__init__(seed=seed, vae_steps=1, train_steps=1, batch_size=4, num_train_scenes=8,
                             num_eval_scenes=2, settings=("1x1",), num_overlays=1)

    monkeypatch.setattr(digseg.cli.quickstart, "QuickstartSettings", TinyQuickstart)
    monkeypatch.setattr(digseg.cli.quickstart, "train_tiny_vae", functools.partial(train_tiny_vae, batch_size=2))
    for name, preset in protocols.PRESETS.items():  # the benchmarks' test scales and windows, 1/16 of their size
        monkeypatch.setitem(protocols.PRESETS, name, _small_protocol(preset))
    monkeypatch.setattr(protocols, "CATSEG", _small_protocol(protocols.CATSEG))
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)  # train/quickstart --device cpu set it; restored after
    monkeypatch.setenv("WANDB_MODE", "offline")
    doc = where.split(":")[0]
    folder = fixtures.folder(doc)
    monkeypatch.chdir(folder)
    argv = _runnable(args, doc, fixtures)
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse: an unknown flag or a bad value
        status = exc.code
    err = capsys.readouterr().err
    assert status == 0, f"{where}: digseg {args}\n  ran as: digseg {shlex.join(argv)}\n{err[-3000:]}"
    config = _config(argv, folder) if argv[0] == "train" else None
    output = build_parser().parse_args(argv).output or (config and config.run.output_dir)
    if output:  # what later commands of the doc read
        fixtures.outputs[doc].append(folder / output)
