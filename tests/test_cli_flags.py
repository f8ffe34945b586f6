"""The command line: one name per concept across every command, every option explained, every config field
reachable (`--cfg-options`), `base` chains, and resume as one command."""

from __future__ import annotations

import argparse
import collections
import logging

import pytest
import yaml

from digseg.cli import main
from digseg.cli.parser import build_parser
from digseg.errors import ConfigError
from digseg.training.config import TrainConfig, parse_overrides
from training_helpers import error_line, final_weights

# flags whose help says what they are for their own command: where it writes, which model, what one batch holds
PER_COMMAND = {"--output", "--model", "--batch-size"}


def _flags() -> dict[str, list[tuple[str, argparse.Action]]]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    flags = collections.defaultdict(list)
    for command, sub in commands.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                for flag in action.option_strings:
                    flags[flag].append((command, action))
    return flags


def test_one_flag_one_meaning_on_every_command():
    flags = _flags()
    assert len(flags) > 60
    for flag, uses in flags.items():
        for command, action in uses:
            assert action.help and action.help.strip(), f"{command} {flag} has no help"
        assert len({action.dest for _, action in uses}) == 1, f"{flag} sets two destinations: {uses}"
        assert len({(action.type, tuple(action.choices or ())) for _, action in uses}) == 1, f"{flag}: two types"
        if flag not in PER_COMMAND:
            meanings = {action.help.split(" (")[0] for _, action in uses}
            assert len(meanings) == 1, f"{flag} means {len(meanings)} things: {meanings}"
    # the names that used to mean two things
    for gone in ("--resolution", "--train-steps", "--cache", "--prompt-template"):
        assert gone not in flags
    assert {c for c, _ in flags["--crop-size"]} == {"train", "cache-latents", "browse-data", "check-data"}
    assert {c for c, _ in flags["--steps"]} == {"predict", "eval"}  # denoising steps; optimizer steps: --max-steps
    assert sum(c == "train" for uses in flags.values() for c, _ in uses) <= 20  # the rest: --cfg-options


def test_cfg_options_reach_every_field_typed():
    assert parse_overrides(["optim.learning_rate=1e-4", "data.crop_size=[32,48]", "run.log_with=none",
                            "optim.use_ema=true", "data.val_fraction=null"]) == {
        "optim": {"learning_rate": 1e-4, "use_ema": True}, "data": {"crop_size": [32, 48], "val_fraction": None},
        "run": {"log_with": "none"}}
    assert parse_overrides(["optim.mixed_precision=no"]) == {"optim": {"mixed_precision": "no"}}  # not YAML's false
    for bad, said in (("optim.learning_rate=fast", "takes float"), ("optim.max_steps=2.5", "takes int"),
                      ("optim.nope=1", "no field 'optim.nope'"), ("learning_rate", "section.field=value"),
                      ("data.hf.ignore_index=x", "takes int"), ("data.hf.column=x", "known: image_column"),
                      ("data.task.x=1", "data.task is no mapping")):
        with pytest.raises(ConfigError, match=said):
            parse_overrides([bad])


def test_cfg_options_set_a_mappings_keys_over_the_files(tmp_path):
    (tmp_path / "c.yaml").write_text("data: {dataset: 'hf:x', hf: {label_column: mask, val_split: dev}}\n")
    overrides = parse_overrides(["data.hf.val_split=2017", "data.hf.reduce_zero_label=true"])
    assert overrides == {"data": {"hf": {"val_split": "2017", "reduce_zero_label": True}}}  # a name stays a name
    config = TrainConfig.load(tmp_path / "c.yaml", overrides)
    assert config.data.hf == {"label_column": "mask", "val_split": "2017", "reduce_zero_label": True}


def test_base_configs_chain_to_any_depth(tmp_path):
    (tmp_path / "a.yaml").write_text("optim: {learning_rate: 1.0e-4, max_steps: 10}\nrun: {seed: 3}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\noptim: {max_steps: 20}\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\nrun: {seed: 5}\n")
    config = TrainConfig.load(tmp_path / "c.yaml")
    assert (config.optim.learning_rate, config.optim.max_steps, config.run.seed) == (1e-4, 20, 5)
    (tmp_path / "a.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="names itself as a base"):
        TrainConfig.load(tmp_path / "c.yaml")


def test_resume_is_one_command_and_a_refusal_names_the_fix(tiny_backbone, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    first = ["train", "--pretrained", str(tiny_backbone), "--cfg-options", "data.num_scenes=4", "--crop-size", "32", "--batch-size",
             "2", "--max-steps", "2", "--checkpoint-every", "1", "--cfg-options", "run.log_with=none", "data.augmentation=false",
             "--output", str(run), "--cfg-options", "optim.lr_warmup_steps=4", "optim.learning_rate=1e-3"]
    with caplog.at_level(logging.WARNING, logger="digseg.train"):
        assert main(first) == 0
    assert "never reaches" in caplog.text  # 2 steps inside a 4-step warm-up
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["lr_warmup_steps"] == 4 and saved["optim"]["learning_rate"] == 1e-3
    # every value from the run's own config.yaml: nothing else to repeat
    assert main(["train", "--output", str(run), "--resume", "latest", "--max-steps", "2"]) == 0
    assert main(["train", "--output", str(run), "--resume", str(run / "checkpoints" / "step-00000001")]) == 0
    assert final_weights(run)
    capsys.readouterr()
    assert main(["train", "--output", str(run), "--resume", "latest", "--learning-rate", "5e-4"]) == 2
    line = error_line(capsys)
    assert "optim.learning_rate: 0.001 -> 0.0005" in line and f"digseg train --output {run} --resume" in line
