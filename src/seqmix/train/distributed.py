"""Training on several processes: the process group, DDP / FSDP2, and state dicts across processes.

One process per device, launched by ``torchrun --nproc-per-node N -m seqmix train ...`` (any number of
nodes) or by ``seqmix train --nproc N`` (``launch``: torchrun's own launcher, in-process, standalone on
127.0.0.1). ``Ranks.from_environment`` reads RANK / WORLD_SIZE / LOCAL_RANK set by the launcher and joins the
group, NCCL on CUDA and gloo on CPU; a plain ``python`` process is one rank and initialises nothing, so the
same training code runs on one process or many.

State dicts go through ``torch.distributed.checkpoint.state_dict`` (``get_/set_model_state_dict``,
``get_/set_optimizer_state_dict``), which speaks the same names for a plain module, DDP and FSDP2: a
checkpoint written by any of them resumes with any other, and with another number of processes.
"""
from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.tensor import DTensor

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0, on the CPU


@dataclass
class Ranks:
    """This process's place: ``rank`` of ``world_size``, ``local_rank`` on its node, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this object initialised the process group, and close() ends it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: str = "auto") -> "Ranks":
        """Join the process group the launcher describes in the environment (or the one already
        initialised); ``device``: "auto", "cpu" or "cuda" (then ``cuda:LOCAL_RANK``)."""
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("TrainConfig.device='cuda' but no CUDA device is available; use 'cpu' or 'auto'")
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1 and not dist.is_initialized():
            return cls(0, 1, 0, torch.device("cuda" if use_cuda else "cpu"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank,
                   torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"), owns)

    def _reduce(self, values, op) -> list[float]:
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def sum(self, *values: float) -> list[float]:
        """The sums over all ranks (every rank gets them)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, value: float) -> float:
        return self._reduce([value], dist.ReduceOp.MAX)[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def wrap(model: torch.nn.Module, parallel: str, ranks: Ranks) -> torch.nn.Module:
    """``model`` itself (one process), in DDP, or sharded in place by FSDP2 (``fully_shard`` on every block,
    then on the whole: embedding, final norm and head form the root's group)."""
    if not ranks.distributed:
        return model
    if parallel == "ddp":
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ranks.local_rank] if ranks.device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ranks.device.type, (ranks.world_size,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def gradient_sync(wrapped: torch.nn.Module, sync: bool):
    """Context for one micro-batch's forward and backward: gradients are averaged across ranks only when
    ``sync`` (the last micro-batch of a step); before, they accumulate locally."""
    if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) and not sync:
        return wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def clip_grad_norm(parameters, max_norm: float) -> float:
    """torch's clip_grad_norm_, returning the total norm over all shards as a float."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return norm.item()


def full_model_state(wrapped: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on rank 0's CPU (empty on the other ranks); every rank must call it."""
    return get_model_state_dict(wrapped, options=FULL)


def full_optimizer_tensors(wrapped: torch.nn.Module, optimizer) -> dict[str, torch.Tensor]:
    """The optimiser moments as ``optimizer/<parameter name>/<key>`` tensors on rank 0 (empty elsewhere)."""
    state = get_optimizer_state_dict(wrapped, optimizer, options=FULL)
    return {f"optimizer/{name}/{k}": v if isinstance(v, torch.Tensor) else torch.tensor(v)
            for name, moments in state.get("state", {}).items() for k, v in moments.items()}


def load_full(wrapped: torch.nn.Module, optimizer, model_state: dict[str, torch.Tensor],
              optimizer_tensors: dict[str, torch.Tensor]) -> None:
    """Load a full state dict and ``full_optimizer_tensors`` (every rank holds them whole) into the
    possibly sharded model and optimiser."""
    whole = StateDictOptions(full_state_dict=True)
    set_model_state_dict(wrapped, model_state, options=whole)
    moments: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in optimizer_tensors.items():
        if key.startswith("optimizer/"):
            name, _, field = key[len("optimizer/"):].rpartition("/")
            moments.setdefault(name, {})[field] = value
    names = {id(p): n for n, p in getattr(wrapped, "module", wrapped).named_parameters()}  # DDP: .module
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
              for g in optimizer.param_groups]
    set_optimizer_state_dict(wrapped, optimizer, {"state": moments, "param_groups": groups}, options=whole)


@contextlib.contextmanager
def _one_process_dcp():
    """torch.distributed.checkpoint warns on every use without a process group, which is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
        yield


def save_sharded(directory: Path, wrapped: torch.nn.Module, optimizer) -> None:
    """Every rank writes its own shards of model and optimiser into ``directory`` (rank 0 the index)."""
    state = {"model": get_model_state_dict(wrapped), "optimizer": get_optimizer_state_dict(wrapped, optimizer)}
    with _one_process_dcp():
        dcp.save(state, checkpoint_id=str(directory), no_dist=not dist.is_initialized())


def load_sharded(directory: Path, wrapped: torch.nn.Module, optimizer=None) -> None:
    """Load a sharded checkpoint written by any number of processes into this one's (shards of the) model
    and, if given, optimiser."""
    state = {"model": get_model_state_dict(wrapped)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(wrapped, optimizer)
    with _one_process_dcp():
        dcp.load(state, checkpoint_id=str(directory), no_dist=not dist.is_initialized())
    set_model_state_dict(wrapped, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(wrapped, optimizer, state["optimizer"])


def launch(nproc: int, fn, *args) -> dict[int, object]:
    """Run ``fn(*args)`` in ``nproc`` new local processes as ``torchrun --standalone --nproc-per-node nproc``
    would, all addresses on 127.0.0.1 (the rendezvous at a free port: no network is needed) -> {rank: return
    value}.
    When one process fails, the others are stopped and ``ChildFailedError`` is raised."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"seqmix-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1", max_restarts=0,
                          start_method="spawn")
    return elastic_launch(config, fn)(*args)
