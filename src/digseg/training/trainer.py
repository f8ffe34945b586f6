"""The DiGSeg trainer, on accelerate: the widened U-Net and the text pathway trained (VAE and text encoder frozen)
with `diffusion_loss` or `one_step_loss`, into a run folder (config.yaml, checkpoints, logs, the trained model)."""

from __future__ import annotations

import logging
import math
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..distributed import launched_without_accelerator
from ..data.check import write_sample_list
from ..errors import ConfigError, DigsegError, first_line
from ..pipelines.masks import MaskCodec
from ..pipelines.model_card import read_card_facts, run_facts
from ..pipelines.pipeline import DiGSegPipeline
from ..evaluation.protocols import protocol_for
from ..models.adapters import TRAINED_ADAPTER, add_lora, has_lora, lora_state_dict, save_adapter
from .batches import Batch, per_sample, slot_generators
from .checkpoint import (SHARDS, begin_staging, kill_point, load_checkpoint, prune_checkpoints, remove_stale,
                         save_checkpoint, staging_folder)
from .config import OptimConfig, RunConfig, TrainConfig
from .divergence import DivergenceGuard, all_finite, inject_nan_gradient
from .resume_check import ResumePlan, launch_facts, mixed_precision_of, plan_resume, samples_facts
from ..run_lock import TRAIN, RunFolderLock
from .samples import TrainingData
from .sharding import ShardedState, check_sharding, local_shards, shard_modules
from .tracking import TrainingLogger
from .validation import evaluate, evaluation_weights

logger = logging.getLogger("digseg.train")


def diffusion_loss(pipe: DiGSegPipeline, unet: nn.Module, pathway: nn.Module, batch: Batch,
                   gen: torch.Generator | list[torch.Generator], max_timestep_prob: float = 0.0) -> torch.Tensor:
    """MSE between the U-Net's prediction and the scheduler's target, ignore cells masked out, averaged per sample
    over its kept cells, then over samples (N processes' mean loss is that of their joint batch). `gen`: one
    generator per sample (its noise and timestep) or one for all; the timestep is T-1 with probability
    `max_timestep_prob`, else uniform over [0, T)."""
    z0 = batch.mask_latents  # [B, 4, h, w]
    T = pipe.scheduler.config.num_train_timesteps
    noise, t = [], []
    for g in per_sample(gen, z0.shape[0]):
        noise.append(torch.randn(z0.shape[1:], generator=g))
        uniform = torch.randint(0, T, (1,), generator=g)
        t.append(torch.full_like(uniform, T - 1) if torch.rand(1, generator=g) < max_timestep_prob else uniform)
    noise = torch.stack(noise).to(z0.device)  # [B, 4, h, w]
    t = torch.cat(t).to(z0.device)  # [B]
    z_t, target = pipe.noisy_latents_and_target(z0, noise, t)
    text = pathway(pipe.prompt_states(batch.prompts).to(z0.device))  # num_levels x [B, L, C]
    pred = pipe.unet_prediction(unet, torch.cat([batch.image_latents, z_t], 1), t, text)  # [B, 4, h, w]
    weights = batch.keep.expand_as(pred)  # [B, 4, h, w]
    per_sample_loss = ((pred.float() - target.float()) ** 2 * weights).flatten(1).sum(1)  # [B]
    return (per_sample_loss / weights.flatten(1).sum(1).clamp(min=1.0)).mean()


def one_step_loss(pipe: DiGSegPipeline, unet: nn.Module, pathway: nn.Module, batch: Batch, palette_codec: MaskCodec,
                  binary_codec: MaskCodec, mask_decoder: str) -> torch.Tensor:
    """The one-step objective: one deterministic U-Net pass decoded by the frozen mask decoder ("light" or "vae"),
    read as class scores as inference reads them; cross-entropy against `batch.targets` (ignore masked out),
    averaged per sample, then over samples."""
    device = batch.image_latents.device
    text = pathway(pipe.prompt_states(batch.prompts).to(device))  # num_levels x [B, L, C]
    z0 = pipe.one_step_latents(unet, batch.image_latents, text)  # [B, 4, h, w]
    images = pipe.decode_masks(z0, mask_decoder)  # [B, 3, H', W'], float32, differentiable
    targets = batch.targets  # [B, H, W]
    if tuple(images.shape[-2:]) != tuple(targets.shape[-2:]):  # a crop that is not a multiple of the VAE's factor
        images = F.interpolate(images, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    is_palette = torch.tensor(batch.palette, device=device)  # [B] bool
    per_sample = images.new_zeros(len(batch.palette))  # [B]
    with torch.autocast(device.type, enabled=False):  # palette logits of many classes need float32
        for codec, rows in ((palette_codec, is_palette), (binary_codec, ~is_palette)):
            if not bool(rows.any()):
                continue
            logits = codec.logits(images[rows].float())  # [n, K, H, W]
            target = targets[rows]  # [n, H, W]
            pixel = F.cross_entropy(logits, target, ignore_index=codec.ignore_index, reduction="none")  # [n, H, W]
            counted = (target != codec.ignore_index).flatten(1).sum(1).clamp(min=1)  # [n]
            per_sample = per_sample.index_put((rows.nonzero()[:, 0],), pixel.flatten(1).sum(1) / counted)
    return per_sample.mean()


def _make_accelerator(optim: OptimConfig, run: RunConfig) -> Accelerator:
    """An Accelerator for this run; a second trainer in one process (a notebook) with another precision resets
    accelerate's process-wide state instead of failing."""
    kwargs = dict(gradient_accumulation_steps=optim.gradient_accumulation_steps, cpu=launched_without_accelerator(),
                  mixed_precision=mixed_precision_of(optim),
                  **TrainingLogger.tracker_kwargs(run.log_with, Path(run.output_dir)))
    try:
        return Accelerator(**kwargs)
    except ValueError as exc:
        if "already been initialized" not in str(exc):
            raise
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
        return Accelerator(**kwargs)


def make_optimizer(name: str, params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """`optim.optimizer`: "adamw", fused where torch has a kernel for the device (on CPU ~5x faster for the SD2
    U-Net, docs/benchmarks.md), or "adamw8bit", torchao's AdamW8bit (moments in 8 bits with a scale per block)."""
    if name == "adamw":
        fused = params[0].device.type in ("cpu", "cuda", "xpu", "mps") or None
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    try:
        from torchao.optim import AdamW8bit
    except ImportError as exc:
        raise DigsegError(f'optimizer adamw8bit needs torchao: pip install -e ".[lowmem]" ({exc})') from exc
    return AdamW8bit(params, lr=lr, weight_decay=weight_decay)


def begin_lora(unet: nn.Module, optim: OptimConfig, seed: int) -> None:
    """`optim.finetune: lora`: LoRA adapter `TRAINED_ADAPTER` on `unet` (seeded); only it and conv_in train."""
    if has_lora(unet):
        raise DigsegError("optim.finetune lora: this model has LoRA adapters loaded already; train from the base "
                          "model (model.pretrained) instead")
    unet.requires_grad_(False)
    add_lora(unet, optim.lora_rank, optim.lora_alpha, optim.lora_targets, TRAINED_ADAPTER, seed=seed)
    unet.conv_in.requires_grad_(True)


class Trainer:
    """`Trainer(config, pipe, data).train()`, built by `digseg.training.run.build_run`."""

    def __init__(self, config: TrainConfig, pipe: DiGSegPipeline, data: TrainingData, show_progress: bool = True,
                 val_dataset: Dataset | None = None) -> None:
        """`val_dataset`: the validation split, previewed (None: training images are) and scored (needed then)."""
        self.config = config.validate()
        self.optim, self.run = opt, run = config.optim, config.run
        self.pipe, self.data, self.val_dataset, self.show_progress = pipe, data, val_dataset, show_progress
        self.resume_plan: ResumePlan | None = None  # what build_run(resume=...) checked: train() continues it
        self._preview_samples: list[dict] | None = None
        self.output_dir = Path(run.output_dir)
        self.accelerator = acc = _make_accelerator(opt, run)
        check_sharding(acc.distributed_type, run.sharding, acc.mixed_precision)
        if run.eval_every and val_dataset is None:
            raise ConfigError("run.eval_every (--eval-every) needs a validation split: build the run with build_run "
                              "from a config, or pass `val_dataset=` the validation split")
        pipe.to(acc.device)
        modules = (pipe.unet, pipe.text_pathway)
        for module in modules:  # float32 master weights, whatever dtype the files or the caller's pipeline had
            module.float().train().requires_grad_(True)
        self.one_step = pipe.config.objective == "one-step"
        if opt.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            if self.one_step and pipe.config.one_step_decoder == "vae":  # backward runs through the VAE decoder
                pipe.vae.enable_gradient_checkpointing()
        self.lora = opt.finetune == "lora"
        if self.lora:
            begin_lora(pipe.unet, opt, run.seed)
        self.sharded = run.sharding == "fsdp"
        if self.sharded:  # in place: the parameters become DTensors holding this process's chunks
            shard_modules(pipe.unet, pipe.text_pathway, acc.device)
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(opt.optimizer, params, opt.learning_rate, opt.weight_decay)
        self.lr_scheduler = self._make_lr_scheduler(self.optimizer)
        if opt.lr_warmup_steps >= opt.max_steps and opt.lr_scheduler != "constant":
            lr = opt.learning_rate
            logger.warning("optim.max_steps (%d) <= optim.lr_warmup_steps (%d): the learning rate never reaches %g "
                           "(at most %.2g); lower the warm-up: --cfg-options optim.lr_warmup_steps=N", opt.max_steps,
                           opt.lr_warmup_steps, lr, lr * opt.max_steps / opt.lr_warmup_steps)
        # sharded: FSDP2 reduces the gradients itself; accelerate wraps only the optimizer (accumulation, scaler)
        self.unet, self.text_pathway = modules if self.sharded else acc.prepare(*modules)
        self.optimizer = acc.prepare(self.optimizer)
        self.params = [p for m in (self.unet, self.text_pathway) for p in m.parameters() if p.requires_grad]
        # the U-Net tensors a LoRA run checkpoints (None: the whole state dict)
        self.unet_keys = [name for name, p in acc.unwrap_model(self.unet).named_parameters()
                          if p.requires_grad] if self.lora else None
        self.ema = EMAModel(self._ema_params(), decay=opt.ema_decay) if opt.use_ema else None
        self.ema_device = torch.device("cpu") if opt.ema_device == "cpu" else acc.device
        if self.ema is not None:
            self.ema.to(self.ema_device)
        self.shards = ShardedState({"unet": self.unet, "text_pathway": self.text_pathway}, self.optimizer.optimizer,
                                   self.params, self.ema) if self.sharded else None
        if self.sharded and run.sample_every and acc.log_with and acc.is_main_process:
            logger.warning("sample previews are off with run.sharding fsdp: the sharded U-Net runs only when every "
                           "process runs it")
        self.step, self.last_loss = 0, float("nan")
        self.best: dict | None = None  # {"step", "metric", "value"}: the best validated step so far
        self.last_validation: dict | None = None  # {"step", "val/mIoU", ...}: the latest scores (the model card's)
        self.config_changes: list[dict] = []  # changes made on resume (resume_check.plan_resume)
        self.guard = DivergenceGuard(self.output_dir, opt.max_consecutive_skips, opt.learning_rate)
        self._lock = RunFolderLock(self.output_dir, TRAIN)
        if acc.is_main_process:
            self._lock.acquire()
        self._unlock = weakref.finalize(self, self._lock.release)  # a trainer dropped untrained lets go too
        self.logs = TrainingLogger(acc, self.output_dir, config.to_dict(), use_trackers=bool(acc.log_with))

    def _make_lr_scheduler(self, optimizer: torch.optim.Optimizer, step: int = 0):
        """`optim.lr_scheduler` over `optim.max_steps`, at `step` (then the param groups must hold "initial_lr")."""
        return get_scheduler(self.optim.lr_scheduler, optimizer, num_warmup_steps=self.optim.lr_warmup_steps,
                             num_training_steps=self.optim.max_steps, last_epoch=step - 1)

    def _ema_params(self) -> list[torch.Tensor]:
        """What the EMA averages: the trainable parameters, or under sharding this process's chunks of them."""
        return local_shards(self.params) if self.sharded else self.params

    def save_checkpoint(self, best: bool = False) -> Path | None:
        """Every process calls this; the main one writes `checkpoints/step-<step>` (or `best`) -> its path."""
        acc = self.accelerator
        acc.wait_for_everyone()
        ema = list(self.ema.shadow_params) if self.ema is not None else []
        moments = [v for state in self.optimizer.optimizer.state.values() for v in state.values()
                   if isinstance(v, torch.Tensor)]
        if not all_finite(self.params + ema + moments, acc):
            self.guard.stop(f"the weights after step {self.step} are not finite", self.step)
        root = self.output_dir / "checkpoints"
        staged = staging_folder(root, self.step, best) if self.sharded else None
        if self.sharded:
            if acc.is_main_process:
                begin_staging(staged)
            acc.wait_for_everyone()  # the folder exists (older leftovers gone) before each process writes its file
            weights, optimizer_state = {}, {"state": {}, "param_groups": self.shards.save(staged / SHARDS)}
        else:
            unet = acc.get_state_dict(self.unet)
            if self.unet_keys is not None:  # LoRA: the LoRA matrices and conv_in, not the frozen backbone
                unet = {k: unet[k] for k in self.unet_keys}
            weights = {"unet": unet, "text_pathway": acc.get_state_dict(self.text_pathway)}
            if ema:
                weights["ema"] = {f"{i:06d}": p for i, p in enumerate(ema)}
            optimizer_state = self.optimizer.state_dict()
        path = None
        if acc.is_main_process:
            extra = {"lr_scheduler": self.lr_scheduler.state_dict(),
                     "ema": {"optimization_step": self.ema.optimization_step} if self.ema else None,
                     "loss": self.last_loss, "best": self.best,
                     "config": self.config.to_dict(),  # what a resume is checked against (resume_check.py)
                     "launch": launch_facts(self.optim, acc.num_processes), "config_changes": self.config_changes,
                     "sharding": self.run.sharding, "samples": samples_facts(self.data.check),
                     "skips": self.guard.state_dict()}
            # one more kept until the newest proves healthy (divergence.py): the error of a diverging run names it
            path = save_checkpoint(root, self.step, weights, optimizer_state, extra, self.run.keep_checkpoints + 1,
                                   staged, self.best if best else None)
            if not best:
                self.guard.prune_pending = True
        acc.wait_for_everyone()  # nobody runs ahead (or is killed) before the checkpoint exists
        return path

    def load_checkpoint(self, path: Path, new_values: bool = False) -> None:
        """Continue from checkpoint `path` (every process). `new_values` (--allow-config-change): the learning rate,
        weight decay and schedule are the config's at the checkpoint's step, and an optimizer of another kind, or
        an EMA turned on, starts afresh."""
        weights, optimizer_state, state = load_checkpoint(path)
        saved = state.get("sharding", "none")
        if saved != self.run.sharding:
            raise DigsegError(f"checkpoint {path} was written with run.sharding {saved}: resume it with --cfg-options "
                              f"run.sharding={saved} (with any number of processes)")
        self.step = int(state["step"])
        saved_optimizer = ((state.get("config") or {}).get("optim") or {}).get("optimizer", self.optim.optimizer)
        has_ema = state.get("ema") is not None and (self.sharded or "ema" in weights)
        if self.sharded:
            if saved_optimizer != self.optim.optimizer or (self.ema is not None and not has_ema):
                raise DigsegError(f"checkpoint {path} is sharded: its optimizer and EMA cannot change on resume")
            self.shards.load(path / SHARDS, optimizer_state["param_groups"])
        else:
            unwrap = self.accelerator.unwrap_model
            keys = set(self.unet_keys or weights["unet"])  # a LoRA run's: exactly its trainable U-Net tensors
            missing, unexpected = sorted(keys - set(weights["unet"])), sorted(set(weights["unet"]) - keys)
            try:
                if missing or unexpected:
                    raise RuntimeError(f"the LoRA run's U-Net tensors differ: "
                                       f"{'missing ' + missing[0] if missing else 'unexpected ' + unexpected[0]} "
                                       f"({len(missing)} missing, {len(unexpected)} unexpected)")
                unwrap(self.unet).load_state_dict(weights["unet"], strict=self.unet_keys is None)
                unwrap(self.text_pathway).load_state_dict(weights["text_pathway"])
            except RuntimeError as exc:
                raise DigsegError(f"checkpoint {path} does not fit this run's model: {first_line(exc)}") from exc
            if saved_optimizer != self.optim.optimizer:
                logger.warning("%s: optimizer %s -> %s: its moments start afresh", path, saved_optimizer,
                               self.optim.optimizer)
            else:
                self.optimizer.load_state_dict(optimizer_state)
        if new_values:  # the config's learning rate and weight decay, the schedule rebuilt at this step
            optimizer = self.lr_scheduler.optimizer  # the one under accelerate's wrapper, which the schedule drives
            for group in optimizer.param_groups:
                for key, value in (("lr", self.optim.learning_rate), ("initial_lr", self.optim.learning_rate),
                                   ("weight_decay", self.optim.weight_decay)):
                    if isinstance(group.get(key), torch.Tensor):  # torchao keeps lr as a tensor
                        group[key].fill_(value)
                    else:
                        group[key] = value
            self.lr_scheduler = self._make_lr_scheduler(optimizer, self.step)
        else:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None and has_ema:
            if not self.sharded:
                shadow = weights["ema"]
                self.ema.shadow_params = [shadow[k].to(self.ema_device) for k in sorted(shadow)]
            self.ema.optimization_step = state["ema"]["optimization_step"]
        elif self.ema is not None and new_values:  # EMA turned on: it starts from the resumed weights
            self.ema = EMAModel(self.params, decay=self.optim.ema_decay)
            self.ema.to(self.ema_device)
        elif self.ema is not None:
            raise DigsegError(f"checkpoint {path} has no EMA weights but use_ema is on")
        self.best = state.get("best")
        self.guard.load_state_dict(state.get("skips"))
        self.logs.truncate_after(self.step, revalidate=self._validation_due())
        logger.info("resumed from %s at step %d", path, self.step)

    def train(self, resume: str | None = None, allow_config_change: bool = False) -> DiGSegPipeline:
        """Train to `optim.max_steps`, from checkpoint `resume` ("latest": the newest in the run folder, if any;
        None: the one `build_run(resume=...)` checked), checked by resume_check.py first. Unlocks the run folder."""
        try:
            acc = self.accelerator
            check = self.data.check
            plan = self.resume_plan if resume is None else plan_resume(
                self.config, resume, allow_config_change, launch_facts(self.optim, acc.num_processes), check)
            self.config_changes = plan.history if plan is not None else []
            if acc.is_main_process:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                self.config.save(self.output_dir / "config.yaml", self.config_changes)
                if check is not None:
                    write_sample_list(self.output_dir, check)  # what a later resume names added and removed files by
                remove_stale(self.output_dir / "checkpoints")  # a killed run's half-written or half-deleted folders
                # ... or unpruned ones (one more kept: the newest may not have proved healthy, divergence.py)
                prune_checkpoints(self.output_dir / "checkpoints", self.run.keep_checkpoints + 1)
            if plan is not None:
                self.load_checkpoint(plan.checkpoint, new_values=plan.trajectory_changed)
                if plan.changes:
                    change = plan.history[-1]  # resume_check.plan_resume
                    self.logs.log_note(change["step"], config_change=change["fields"], trajectory=change["trajectory"])
                    say = logger.warning if plan.trajectory_changed else logger.info
                    say("resumed at step %d with a changed config (recorded in config.yaml): %s", self.step,
                        ", ".join(map(str, plan.changes)))
                if self._validation_due():  # the checkpoint was written before its step's validation
                    self.validate()
            if check is not None and check.bad:
                logger.warning("training without %d bad sample(s) (data.bad_samples: skip), listed in %s",
                               len(check.bad), self.output_dir / "data-check.json")
                self.logs.log_note(self.step, bad_samples=[{"name": b.name, "problem": b.problem} for b in check.bad])
            bar = tqdm(total=self.optim.max_steps, initial=self.step, desc="train",
                       disable=not (self.show_progress and acc.is_main_process))
            with bar:  # closed (its line ended) before any error below reaches the user
                self._run_steps(bar)
            return self.finish()
        finally:
            self._unlock()

    def _run_steps(self, bar) -> None:
        opt, run, acc = self.optim, self.run, self.accelerator
        accum = opt.gradient_accumulation_steps
        batches = self.data.micro_steps(self.step * accum, opt.max_steps * accum, opt.batch_size, acc.num_processes,
                                        acc.process_index, run.seed, pin_memory=acc.device.type == "cuda")
        history = []
        while self.step < opt.max_steps:
            updated = True
            for micro in range(accum):
                micro_step = self.step * accum + micro
                samples = next(batches)  # read (and augmented) by the loader's workers
                assert samples.micro_step == micro_step, (samples.micro_step, micro_step)
                for problem in samples.skipped or ():  # a file gone bad since the data check (data.bad_samples: skip)
                    logger.warning("skipped a sample that cannot be read: %s", problem)
                    self.logs.log_note(self.step + 1, bad_sample=problem)
                gen = slot_generators(run.seed, micro_step, samples.slots)
                with acc.accumulate(self.unet, self.text_pathway):
                    with acc.autocast():  # the frozen VAE encodes in the run's precision too (bf16 on GPUs)
                        batch = self.data.batcher.make_batch(samples.indices, gen, samples)
                        loss = inject_nan_gradient(self._loss(batch, gen), self.step, acc.process_index)
                    if not all_finite([loss.detach()], acc):  # on every process
                        self.guard.stop(f"loss became {loss.item()} at step {self.step}", self.step)
                    acc.backward(loss)
                    if acc.sync_gradients:
                        updated = self._optimizer_step()
                    self.optimizer.zero_grad(set_to_none=True)
            self.lr_scheduler.step()
            if updated and self.ema is not None:  # an EMA kept on the CPU visits the accelerator for its update
                self.ema.to(acc.device, non_blocking=True)
                self.ema.step(self._ema_params())
                self.ema.to(self.ema_device, non_blocking=True)
            if updated and self.guard.updated() and acc.is_main_process:  # the newest checkpoint proved healthy
                prune_checkpoints(self.output_dir / "checkpoints", run.keep_checkpoints)
            self.step += 1
            self.last_loss = loss.item()
            history.append(self.last_loss)
            bar.update(1)
            if self.step % run.log_every == 0 or self.step == opt.max_steps:
                recent = history[-run.log_every:]
                mean_loss = sum(recent) / len(recent)
                lr = float(self.lr_scheduler.get_last_lr()[0])  # a tensor for torchao
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                self.logs.log_scalars(self.step, mean_loss, lr)
            if run.sample_every and (self.step % run.sample_every == 0 or self.step == opt.max_steps):
                self._log_samples()
            kill_point(f"step-{self.step}")
            if (self.step % run.checkpoint_every == 0 or self.step == opt.max_steps) and not self.guard.consecutive:
                self.save_checkpoint()  # not during a row of skipped steps: their weights failed (divergence.py)
            if self._validation_due():  # after the checkpoint: see validation.py
                self.validate()

    def _optimizer_step(self) -> bool:
        """Clip the gradients, then update the weights unless they are not finite -> whether they were updated."""
        acc = self.accelerator
        limit = self.optim.max_grad_norm if self.optim.max_grad_norm > 0 else math.inf
        norm = acc.clip_grad_norm_(self.params, limit)  # unscaled first under fp16; reduced over every process
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
        if acc.scaler is not None:  # fp16: the GradScaler skips a step with inf/nan gradients (and lowers its scale)
            self.optimizer.step()
            finite = not self.optimizer.step_was_skipped
        else:
            finite = bool(torch.isfinite(norm))
            if finite:
                self.optimizer.step()
        if not finite:
            message = self.guard.skipped_step(self.step, float(norm))
            logger.warning(message)
            self.logs.log_note(self.step + 1, skipped_step=message, skipped_steps=self.guard.skipped)
        return finite

    def _loss(self, batch: Batch, gen: list[torch.Generator]) -> torch.Tensor:
        """The objective's loss of one micro-batch (the pipeline's config names the objective)."""
        if self.one_step:
            batcher = self.data.batcher
            return one_step_loss(self.pipe, self.unet, self.text_pathway, batch, batcher.palette_codec,
                                 batcher.binary_codec, self.pipe.config.one_step_decoder)
        return diffusion_loss(self.pipe, self.unet, self.text_pathway, batch, gen, self.optim.max_timestep_prob)

    def _log_samples(self) -> None:
        """Predictions for the same `num_sample_images` images (validation, else training) into the trackers."""
        if not self.logs.use_trackers or not self.accelerator.is_main_process or self.sharded:
            return
        if self._preview_samples is None:
            source = self.val_dataset if self.val_dataset is not None else self.data.samples.dataset
            self._preview_samples = []
            for i in range(min(self.run.num_sample_images, len(source))):
                try:
                    self._preview_samples.append(source[i])
                except DigsegError as exc:  # a preview is not worth stopping training for
                    logger.warning("sample preview skips image %d: %s", i, exc)
        self.logs.log_samples(self.step, self.pipe, self._preview_samples, max(self.data.crop_size), self.run.seed)

    def _validation_due(self) -> bool:
        """Every `run.eval_every` steps and the last one; never when it is 0."""
        every = self.run.eval_every
        return every > 0 and (self.step % every == 0 or self.step == self.optim.max_steps)

    def validate(self) -> None:
        """Score this step's (EMA, if on) weights, log the scores, and on a new best write `checkpoints/best`."""
        with evaluation_weights([self.pipe.unet, self.pipe.text_pathway], self.ema, self.params):
            result = evaluate(self.pipe, self.val_dataset, self.run.eval_samples, self.run.seed, self.optim.batch_size)
        kill_point(f"validation-{self.step}")
        self.logs.log_validation(self.step, result.scores)
        self.last_validation = {"step": self.step, **result.scores}
        if self.best is None or result.value > self.best["value"]:  # the earlier step wins a tie
            self.best = {"step": self.step, "metric": result.metric, "value": result.value}
            self.save_checkpoint(best=True)

    def finish(self) -> DiGSegPipeline:
        """Put the trained (EMA, if on) weights into the pipeline, in eval mode, and save it in the run folder."""
        if self.ema is not None:
            self.ema.copy_to(self._ema_params())
        if self.sharded:  # every process gathers whole copies
            unet, pathway = self.shards.whole_modules().values()
        else:
            unet, pathway = map(self.accelerator.unwrap_model, (self.unet, self.text_pathway))
        for module in (unet, pathway):
            module.eval().requires_grad_(False)
        if not all_finite(list(unet.parameters()) + list(pathway.parameters())):  # the EMA's, if on
            self.guard.stop("the trained weights are not finite", self.step)
        self.pipe.register_modules(unet=unet, text_pathway=pathway)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            prune_checkpoints(self.output_dir / "checkpoints", self.run.keep_checkpoints)
            if self.lora:  # the run's result is the adapter folder, not a whole model (docs/adapters.md)
                opt = self.optim
                save_adapter(self.output_dir / "adapter", lora_state_dict(self.pipe.unet, TRAINED_ADAPTER),
                             self.pipe.current_parts(), vars(self.config.model), opt.lora_rank, opt.lora_alpha,
                             list(opt.lora_targets))
            else:
                card = run_facts(self.config.to_dict(), protocol_for(self.config.data.dataset).source,
                                 self.accelerator.num_processes, self.best, self.last_validation,
                                 previous=read_card_facts(self.config.model.pretrained))
                self.pipe.save_pretrained(self.output_dir, model_card=card)
        self.logs.end()
        return self.pipe
