"""The model card, README.md in every saved model folder: YAML metadata (the Hub's fields, and `digseg`: every fact,
read back by a later save) and a text written from the facts alone. Facts, each optional: `model` (`model_facts`),
`base_model`, `continued_from`, `datasets`, `training` (`run_facts`), `validation`, `evaluation`,
`mask_decoder_training`."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ..data.hf_options import HF_PREFIX
from ..hub_ids import hub_id_or_none
from ..data.model_data import TRAINING_DATA_KEY, TrainingDataRecord

CARD_FILE = "README.md"


def model_facts(pipe) -> dict[str, Any]:
    """What a DiGSeg pipeline says about itself (its config and components)."""
    config = pipe.config
    names = list(config.class_names or [])
    if config.open_clip_text_encoder:
        text = f"open_clip:{config.open_clip_text_encoder}"
    else:
        text = f"{type(pipe.text_encoder).__name__} ({pipe.text_encoder.config.hidden_size}-d)"
    record = config.get(TRAINING_DATA_KEY)
    return {"classes": names, "objective": config.objective, "one_step_decoder": config.one_step_decoder,
            "light_mask_decoder": pipe.mask_decoder is not None,
            "prediction_type": pipe.scheduler.config.prediction_type,
            "processing_resolution": int(config.default_processing_resolution),
            "denoising_steps": int(config.default_denoising_steps), "prompt_template": config.prompt_template,
            "text_encoder": str(text), **({TRAINING_DATA_KEY: dict(record)} if record else {})}


def run_facts(config: dict[str, Any], eval_protocol: str, num_processes: int = 1, best: dict | None = None,
              scores: dict[str, Any] | None = None, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """A training run's facts from its config (`TrainConfig.to_dict()`), its data's `digseg eval` protocol, the best
    step ({"step", "metric", "value"}), the last scores ({"step", "val/mIoU", ...}) and `previous` card's."""
    model, data, optim, run = config["model"], config["data"], config["optim"], config["run"]
    previous = previous or {}
    pretrained = model["pretrained"]
    dataset = data["dataset"] + (f" ({data['data_root']})" if data.get("data_root") else "")
    facts: dict[str, Any] = {
        "base_model": previous.get("base_model") or pretrained,
        "datasets": list(dict.fromkeys([*previous.get("datasets", []), dataset])),
        "training": {
            "objective": model["objective"], "steps": optim["max_steps"], "batch_size": optim["batch_size"],
            "processes": num_processes, "gradient_accumulation_steps": optim["gradient_accumulation_steps"],
            "crop_size": data["crop_size"], "augmentation": bool(data["augmentation"]), "task": data["task"],
            "learning_rate": optim["learning_rate"], "lr_scheduler": optim["lr_scheduler"],
            "mixed_precision": optim["mixed_precision"] or "no", "ema": optim["use_ema"], "seed": run["seed"],
        },
        "evaluation": {"dataset": data["dataset"], "protocol": eval_protocol},
    }
    if previous.get("base_model"):
        facts["continued_from"] = pretrained
    if scores:
        facts["validation"] = {
            "step": scores.get("step"), "scores": {k: v for k, v in scores.items() if k != "step"},
            "best": best, "protocol": f"the first {run['eval_samples']} images of the validation split, E-Step 1x1, "
                                      f"whole image at the processing resolution, seed {run['seed']}",
        }
    return facts


def read_card_facts(folder: str | Path) -> dict[str, Any]:
    """The facts stored in `folder`'s model card ({} when it has none, or one digseg did not write)."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        facts = ModelCard.load(path).data.to_dict().get("digseg")
    except Exception:  # a hand-written README without (valid) metadata
        return {}
    return dict(facts) if isinstance(facts, dict) else {}


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "\n".join(["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in pairs
                                              if value not in (None, "", [])])


def _model_section(model: dict[str, Any], facts: dict[str, Any]) -> str:
    names = model.get("classes", [])
    shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
    objective = model.get("objective", "diffusion")
    if objective == "one-step":
        objective += f" (one deterministic pass, trained through the {model.get('one_step_decoder')} mask decoder)"
    else:
        objective += f" (denoising; prediction type {model.get('prediction_type')})"
    return "## Model\n\n" + _rows([
        ("Base checkpoint", facts.get("base_model")), ("Continued from", facts.get("continued_from")),
        ("Classes", f"{len(names)}: {shown}" if names else "none (prompted with text only)"),
        ("Objective", objective),
        ("Mask decoder", "light (mask_decoder/), used by default" if model.get("light_mask_decoder")
         else "the VAE decoder"),
        ("Text encoder", model.get("text_encoder")), ("Prompt template", f"`{model.get('prompt_template')}`"),
        ("Processing resolution", model.get("processing_resolution")),
        ("Default denoising steps", model.get("denoising_steps")),
    ])


def _training_section(facts: dict[str, Any]) -> str:
    t = facts.get("training")
    if not t:
        return ""
    crop = t.get("crop_size")
    crop = "x".join(map(str, crop)) if isinstance(crop, list) else (crop or "the dataset preset's")
    batch = f"{t['batch_size']} per process x {t['processes']} process(es) x {t['gradient_accumulation_steps']} " \
            "accumulation step(s)"
    return "## Training\n\n" + _rows([
        ("Datasets", ", ".join(facts.get("datasets", []))), ("Objective", t.get("objective")),
        ("Steps", t.get("steps")), ("Batch", batch), ("Crop", crop),
        ("Augmentation", "the dataset's preset" if t.get("augmentation") else "off"), ("Task", t.get("task")),
        ("Learning rate", f"{t.get('learning_rate')} ({t.get('lr_scheduler')})"),
        ("Mixed precision", t.get("mixed_precision")), ("EMA", "yes" if t.get("ema") else "no"),
        ("Seed", t.get("seed")),
    ])


def _validation_section(facts: dict[str, Any]) -> str:
    v = facts.get("validation")
    if not v:
        return ""
    scores = v.get("scores", {})
    head = "| " + " | ".join(k.removeprefix("val/") for k in scores) + " |"
    line = "|" + "---|" * len(scores)
    values = "| " + " | ".join(f"{value:.2f}" for value in scores.values()) + " |"
    best = v.get("best")
    best_line = (f"\n\nBest step: {best['step']} ({best['metric']} {best['value']:.2f}); its checkpoint is kept in the "
                 "run folder's checkpoints/best/.") if best else ""
    return (f"## Validation\n\nAt step {v.get('step')} (the saved weights), on {v.get('protocol')}:\n\n"
            f"{head}\n{line}\n{values}{best_line}")


def _evaluation_section(facts: dict[str, Any], where: str) -> str:
    e = facts.get("evaluation")
    if not e or e["dataset"] == "synthetic":  # generated scenes: `digseg eval` reads datasets on disk
        return ""
    dataset = e["dataset"]
    record = TrainingDataRecord.from_config(facts.get("model") or {})  # the model's data and split rule
    if record is not None and record.dataset == dataset:
        data = " ".join(shlex.quote(flag) for flag in record.eval_flags())
        split = f"It scores the validation split the model was validated on: {record.describe_val()}. "
    else:  # a model that records no data
        data = f"--dataset {dataset}" + ("" if dataset.startswith(HF_PREFIX) else " --data-root DATA_ROOT")
        split = ""
    return ("## Evaluation\n\n"
            f"```bash\ndigseg eval {data} --split val --model {shlex.quote(where)} --output eval_val\n```\n\n"
            f"{split}Default test protocol for this data: {e['protocol']}. It writes eval_val/metrics.json, which "
            "records the protocol used, and the predicted label maps in eval_val/predictions/.")


def _decoder_section(facts: dict[str, Any]) -> str:
    m = facts.get("mask_decoder_training")
    if not m:
        return ""
    return "## Light mask decoder training\n\n" + _rows([
        ("Dataset", m.get("dataset")), ("Samples", m.get("samples")), ("Steps", m.get("steps")),
        ("Target", m.get("target")), ("Resolution", m.get("resolution")), ("Final loss", m.get("final_loss")),
    ])


def write_model_card(folder: str | Path, facts: dict[str, Any], model_id: str | None = None) -> Path:
    """Write `folder`/README.md for `facts`, its loading snippet naming `model_id` or `folder`; -> its path."""
    from huggingface_hub import ModelCard, ModelCardData

    where = model_id or str(folder)
    datasets = [d.split(" (")[0][len(HF_PREFIX):] for d in facts.get("datasets", []) if d.startswith(HF_PREFIX)]
    datasets = [d for d in (hub_id_or_none(d, canonical=True) for d in datasets) if d]
    data = ModelCardData(library_name="digseg", pipeline_tag="image-segmentation", datasets=datasets or None,
                         tags=["digseg", "image-segmentation", "stable-diffusion", "diffusers"],
                         base_model=hub_id_or_none(facts.get("base_model")), digseg=facts)
    title = model_id or Path(folder).resolve().name
    usage = (
        "## How to use\n\n"
        "```python\nfrom digseg import DiGSegPipeline\n\n"
        f'pipe = DiGSegPipeline.from_pretrained("{where}")\n'
        'result = pipe("photo.jpg")  # result.labels: [1, H, W] class ids over the classes above\n```\n\n'
        "or from the command line, with digseg installed:\n\n"
        f"```bash\ndigseg predict --model {where} --image photo.jpg --output predictions/\n```")
    sections = [f"# {title}", "A DiGSeg text-prompted segmenter: a Stable Diffusion model fine-tuned to generate "
                "segmentation masks, conditioned on the image and on class names.",
                _model_section(facts.get("model", {}), facts), _training_section(facts), _validation_section(facts),
                _evaluation_section(facts, where), _decoder_section(facts), usage]
    content = "\n\n".join(s for s in sections if s) + "\n"
    path = Path(folder) / CARD_FILE
    path.write_text(str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{content}")), encoding="utf-8")
    return path
