"""Sharded training (`run.sharding: fsdp`; docs/distributed.md): FSDP2 over the trainable modules, on CUDA (NCCL)
and CPU (gloo), applied here because accelerate's applies only on GPU-class devices and to one model. Checkpoints:
DCP's `HuggingFaceStorageWriter`, one safetensors file per process (DCP's default format pickles); loading reshards
to any process count. FSDP2 and DCP are imported where used: they need torch >= 2.9, unsharded runs do not."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import init_empty_weights
from accelerate.utils import DistributedType
from torch import nn

from ..errors import ConfigError, DigsegError


def check_sharding(distributed_type: DistributedType, sharding: str, mixed_precision: str) -> None:
    """ConfigError for a launch or settings that sharded training cannot honour."""
    if distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ConfigError(f"digseg train does not use accelerate's {distributed_type.value} mode: launch with a DDP "
                          "config (distributed_type: MULTI_GPU, e.g. configs/accelerate/ddp_8gpu.yaml) and shard "
                          "with run.sharding fsdp (docs/distributed.md)")
    if sharding != "fsdp":
        return
    try:
        from torch.distributed.checkpoint import HuggingFaceStorageWriter  # noqa: F401
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"run.sharding fsdp needs torch >= 2.9 (FSDP2 and torch.distributed.checkpoint's safetensors "
                          f"storage); this is torch {torch.__version__} ({exc})") from exc
    if mixed_precision == "fp16":
        raise ConfigError("run.sharding fsdp trains in fp32 or bf16: fp16's loss scaler checks each process's own "
                          "shards for overflow, so processes could skip different steps; use --dtype bf16")


def _units(module: nn.Module | None) -> list[nn.Module]:
    """`module` itself, or the modules a ModuleList holds (a block's resnets, attentions, samplers); [] for None."""
    if module is None:
        return []
    if isinstance(module, nn.ModuleList):
        return [unit for child in module for unit in _units(child)]
    return [module]


def shard_modules(unet: nn.Module, pathway: nn.Module, device: torch.device) -> None:
    """Apply FSDP2 in place to each part of each U-Net block (parts: SD2's largest block has 260 M parameters, its
    largest part 49 M), the U-Net and the text pathway; call before the optimizer is built over them."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():  # FSDP2 and DCP need a process group: an unlaunched process gets a group of one
        backends = {"cpu": "gloo", "cuda": "cpu:gloo,cuda:nccl"}
        if device.type not in backends:
            raise ConfigError(f"run.sharding fsdp runs on CUDA or CPU devices, not {device.type}")
        dist.init_process_group(backend=backends[device.type], store=dist.HashStore(), rank=0, world_size=1)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for name in ("down_blocks", "mid_block", "up_blocks"):  # each part of these blocks is one FSDP unit
        for block in _units(getattr(unet, name, None)):
            for part in (unit for group in block.children() for unit in _units(group)):
                if next(part.parameters(), None) is not None:
                    fully_shard(part, mesh=mesh)
    fully_shard(unet, mesh=mesh)
    fully_shard(pathway, mesh=mesh)


def local_shards(params: list[nn.Parameter]) -> list[torch.Tensor]:
    """This process's chunk of each DTensor parameter, requiring grad (diffusers' EMAModel averages only those)."""
    with torch.enable_grad():
        return [p.to_local() for p in params]


class ShardedState:
    """A sharded run's weights, AdamW moments and EMA as DCP's nested state dict; every method is a collective."""

    def __init__(self, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                 ema=None) -> None:
        """`params`: the `modules`' parameters in order; `optimizer`: the torch optimizer over them (not
        accelerate's wrapper); `ema`: EMAModel over `local_shards(params)`, or None."""
        self.container = nn.ModuleDict(modules)  # parameter names "unet.<name>", "text_pathway.<name>"
        self.optimizer, self.params, self.ema = optimizer, params, ema
        self.names = [name for name, _ in self.container.named_parameters()]
        assert len(self.names) == len(params), "params must be the modules' parameters, in order"  # names the EMA

    def _tensors(self) -> tuple[dict[str, dict], list[dict]]:
        """-> ({"model": {name: tensor}, "optim": {name: {key: tensor}}, "ema": {name: tensor}}, param groups)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict
        from torch.distributed.tensor import DTensor

        model, optim = get_state_dict(self.container, self.optimizer)
        tensors = {"model": model, "optim": optim["state"]}
        if self.ema is not None:
            tensors["ema"] = {name: DTensor.from_local(shadow.to(param.device), param.device_mesh, param.placements,
                                                       run_check=False, shape=param.shape, stride=param.stride())
                              for name, param, shadow in zip(self.names, self.params, self.ema.shadow_params)}
        return tensors, optim["param_groups"]

    def save(self, folder: Path) -> list[dict]:
        """Write this process's shards into `folder` -> the optimizer's param groups (for the JSON state)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageWriter

        tensors, param_groups = self._tensors()
        dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))
        return param_groups

    def load(self, folder: Path, param_groups: list[dict]) -> None:
        """Read the shards in `folder` (of any process count) into the weights, moments and EMA."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageReader
        from torch.distributed.checkpoint.state_dict import set_state_dict

        tensors, _ = self._tensors()
        try:
            dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(folder)))
        except Exception as exc:  # DCP reports each process's failure as a traceback in one CheckpointException
            reason = [line for line in str(exc).splitlines() if line.strip()][-1][:300]  # e.g. "ValueError: Size ..."
            raise DigsegError(f"cannot read sharded checkpoint {folder}: {reason}") from exc
        set_state_dict(self.container, self.optimizer, model_state_dict=tensors["model"],
                       optim_state_dict={"state": tensors["optim"], "param_groups": param_groups})
        if self.ema is not None:
            for name, shadow in zip(self.names, self.ema.shadow_params):
                shadow.copy_(tensors["ema"][name].to_local())

    def whole_modules(self) -> dict[str, nn.Module]:
        """Unsharded copies of the trained modules on every process (plain modules of their class and config, a
        U-Net with its attention processors); frees the moments."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.fsdp import FSDPModule

        self.optimizer.state.clear()
        self.optimizer.zero_grad(set_to_none=True)
        copies = {}
        for name, module in self.container.items():
            weights = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
            cls = next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))
            with init_empty_weights():
                plain = cls.from_config(module.config)
            plain.load_state_dict(weights, assign=True)
            if hasattr(module, "attn_processors"):
                plain.set_attn_processor(module.attn_processors)
            copies[name] = plain.to(next(iter(weights.values())).device)
        return copies
