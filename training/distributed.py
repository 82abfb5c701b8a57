"""DMD training on several processes with PyTorch's own distributed engine (plain PyTorch, no ComfyUI import):
``torchrun`` starts the processes, ``torch.distributed`` connects them, DistributedDataParallel or FSDP
(``fully_shard``) wraps the generator and the fake score, ``torch.distributed.checkpoint`` saves and resumes.

The training step is ``DMDTrainer.step`` and the loop ``DMDRun.train``, the same code the DMD Trainer node runs.
Data parallelism inside the step (``DMDTrainer.rank`` / ``world``): every rank draws the random numbers of the
whole batch (``config.batch_size``, the global batch) from the same seeded sequence and trains on its slice of
``batch_size / world`` samples; DDP's all-reduce or FSDP's reduce-scatter averages the gradients, so N processes
at batch b each take the step one process takes at batch N b (up to the order of floating-point sums). The
losses logged are the mean over the ranks. The teacher is frozen and replicated on every rank.

The checkpoint is a folder: ``torch.distributed.checkpoint`` files of the networks, optimizers and EMA weights
(``get_state_dict`` / ``set_state_dict``, so a run resumes at another world size and under the other wrapper),
plus ``run.json`` (the counters, the schedules, the random generator's state, the settings and the loss
history), written into ``checkpoint.tmp`` and then renamed onto ``checkpoint``: a process killed at any moment
leaves the previous complete checkpoint, and loses at most the steps since it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
from torch import nn

from . import lora
from .config import DMDConfig, DMDConfigError
from .run import DMDRun, RunError, generator_info, generator_state_dict, write_generator

log = logging.getLogger("comfyui_tempo")

STRATEGIES = ("ddp", "fsdp")
RUN_FILE = "run.json"


@dataclass
class Dist:
    """This process's place in the job: rank of world (one process: 0 of 1) and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.initialized:
            dist.barrier()

    def mean(self, values: list[float]) -> list[float]:
        """The mean of each value over the ranks (float64)."""
        if not self.initialized or not values:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def mean_log(self, out: dict) -> dict:
        """A step's logs with every float averaged over the ranks (keys are the same on every rank: every rank
        takes the same branches, its draws being the same sequence)."""
        keys = sorted(k for k, v in out.items() if isinstance(v, float))
        return {**out, **dict(zip(keys, self.mean([out[k] for k in keys])))}

    def close(self, wait: bool = True) -> None:
        """Leave the process group. wait: first wait for every rank (the normal end of a run: a rank that tears gloo
        down while another still has FSDP's last collectives in flight aborts at exit, "terminate called without an
        active exception"); False on an error path, where another rank may never arrive."""
        if self.initialized:
            if wait:
                dist.barrier()
            dist.destroy_process_group()


def exit_job(d: Dist, code: int) -> int:
    """The last line of a torchrun entry point, after ``d.close()``: returns `code` in one process; a process of a
    torchrun job exits here with it instead (stdout and stderr flushed). Past ``destroy_process_group`` gloo's C++
    threads can still hold work that Python's own shutdown then tears down: the FSDP worker aborted at exit
    ("terminate called without an active exception"; pytorch/pytorch#179291 describes the mechanism) in 10 of 30
    runs without ``close``'s barrier, and with it once more in a clean-clone CI run (not again in 14 runs of the same
    command under load). Everything is written and closed by then, so the process leaves without that shutdown. The
    pack's own code never calls it: only its entry points (``comfyui-tempo train dmd``)."""
    if d.world <= 1:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def init(device: str | None = None, backend: str | None = None) -> Dist:
    """Join the job ``torchrun`` started (its WORLD_SIZE, RANK, LOCAL_RANK and rendezvous variables); one
    process without them. The device is ``cuda:LOCAL_RANK`` when CUDA is there (backend nccl), else the CPU
    (backend gloo); ``device`` overrides it ("cpu" on a GPU machine)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
    return Dist(rank, world, local, dev, backend if world > 1 else None)


# ---------------------------------------------------------------------------------------------------- wrapping
def unwrap(net: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (FSDP shards in place: the module itself)."""
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def _broadcast(module: nn.Module, d: Dist) -> None:
    """Rank 0's parameters and buffers on every rank (before FSDP shards them: it does not broadcast)."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)


def _fully_shard(net: nn.Module, mesh) -> None:
    """FSDP2 on every block (each module held in an nn.ModuleList) and then the whole network: a block's
    weights are gathered only while it runs."""
    from torch.distributed.fsdp import fully_shard

    containers = (nn.ModuleList, nn.ModuleDict)
    blocks = [
        (name, m)
        for lname, lst in net.named_modules()
        if isinstance(lst, nn.ModuleList)
        for name, m in ((f"{lname}.{i}", c) for i, c in enumerate(lst))
        if not isinstance(m, containers) and any(p.requires_grad for p in m.parameters())
    ]
    for _, m in sorted(blocks, key=lambda b: -b[0].count(".")):  # inner blocks first
        fully_shard(m, mesh=mesh)
    # the root too reshards after its forward (its default keeps the weights gathered for the backward): a forward
    # without grad (the fake score inside the DM loss) before one with grad otherwise leaves the root's own
    # parameters without gradients
    fully_shard(net, mesh=mesh, reshard_after_forward=True)


def check_batch(config: DMDConfig, world: int) -> None:
    for name in ("batch_size", "regression_batch_size"):
        b = getattr(config, name, None)
        if b and b % world:
            raise DMDConfigError(
                f"{name}: the global batch {b} must be a multiple of the number of processes {world} "
                f"(each takes {b} / {world} samples)"
            )


def wrap(trainer, d: Dist, strategy: str = "ddp") -> None:
    """Make ``trainer`` one rank of ``d``'s job: its share of each batch, the generator, the fake score and the
    GAN head wrapped with DDP (``strategy`` "ddp") or sharded with FSDP2 ``fully_shard`` ("fsdp"), the
    optimizers and EMA rebuilt over them, the logs averaged over the ranks. One process: nothing is wrapped,
    the trainer is the DMD Trainer node's."""
    if strategy not in STRATEGIES:
        raise DMDConfigError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    check_batch(trainer.config, d.world)
    if d.world == 1:
        return
    if not d.initialized:
        raise DMDConfigError("strategy: the process group is not initialized (start the job with torchrun)")
    if strategy == "fsdp" and trainer.lora:
        raise DMDConfigError(
            "strategy: LoRA runs use ddp (their trainable factors are small; fsdp shards full weights)"
        )
    trainer.rank, trainer.world = d.rank, d.world
    nets = [("generator", trainer.generator.net), ("fake_score", trainer.fake_score)]
    if trainer.gan_head is not None:
        nets.append(("gan_head", trainer.gan_head))
    if strategy == "ddp":
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        # gradient_as_bucket_view: the gradients live in DDP's all-reduce buckets (no second copy of them)
        kw = {"device_ids": [d.device.index] if d.device.type == "cuda" else None, "gradient_as_bucket_view": True}
        # the buffers (sigma tables) are the same on every rank: synced once at init, never per forward
        sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else None
        kw[sync or "broadcast_buffers"] = False
        wrapped = {name: DDP(m, **kw) for name, m in nets}
        trainer.generator.net = wrapped["generator"]
        trainer.fake_score = wrapped["fake_score"]
        if trainer.gan_head is not None:
            trainer.gan_head = wrapped["gan_head"]
    else:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(d.device.type, (d.world,))
        for _, m in nets:
            _broadcast(m, d)
            _fully_shard(m, mesh)
    trainer.build_optimizers()
    trainer.reduce_log = d.mean_log


# ---------------------------------------------------------------------------------------------------- checkpoint
def _critic(trainer) -> nn.Module:
    """The fake score and the GAN head under one root (the modules opt_f updates), for their state dicts."""
    mods = {"fake_score": trainer.fake_score}
    if trainer.gan_head is not None:
        mods["gan_head"] = trainer.gan_head
    return nn.ModuleDict(mods)


def _ema_name(k: str) -> str:
    return k[len("module.") :] if k.startswith("module.") else k


def _tensor_state(trainer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(ignore_frozen_params=True)  # LoRA runs: the factors (the base is the teacher)
    g_model, g_optim = get_state_dict(trainer.generator.net, trainer.opt_g, options=opts)
    f_model, f_optim = get_state_dict(_critic(trainer), trainer.opt_f, options=opts)
    state = {"generator": g_model, "opt_g": g_optim, "critic": f_model, "opt_f": f_optim}
    if trainer.ema is not None:
        state["ema"] = {_ema_name(k): v for k, v in trainer.ema.items()}
    return state


def _set_tensor_state(trainer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    opts = StateDictOptions(ignore_frozen_params=True)
    set_state_dict(
        trainer.generator.net,
        trainer.opt_g,
        model_state_dict=state["generator"],
        optim_state_dict=state["opt_g"],
        options=opts,
    )
    set_state_dict(
        _critic(trainer), trainer.opt_f, model_state_dict=state["critic"], optim_state_dict=state["opt_f"], options=opts
    )
    if trainer.ema is not None:
        with torch.no_grad():
            for k, v in trainer.ema.items():
                v.copy_(state["ema"][_ema_name(k)])


def _config_json(config: DMDConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


def find_checkpoint(folder) -> str | None:
    """The complete checkpoint in ``folder`` (``checkpoint``, or ``checkpoint.old`` when a stop fell between the
    two renames), or None."""
    for name in ("checkpoint", "checkpoint.old"):
        p = os.path.join(os.fspath(folder), name)
        if os.path.isfile(os.path.join(p, RUN_FILE)):
            return p
    return None


def read_checkpoint(folder) -> tuple[dict, dict]:
    """(the tensors, flattened as "generator.<name>", "opt_g.state.<name>.exp_avg", ...; the run.json) of the
    checkpoint in a run's ``folder``, in one process (for inspection and tests)."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    path = find_checkpoint(folder)
    if path is None:
        raise RunError(f"folder: no checkpoint in {os.fspath(folder)}")

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            elif isinstance(v, torch.Tensor):
                out[f"{prefix}{k}"] = v
        return out

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        dcp_to_torch_save(path, os.path.join(tmp, "c.pt"))
        tensors = flat(torch.load(os.path.join(tmp, "c.pt"), map_location="cpu", weights_only=True))
    with open(os.path.join(path, RUN_FILE)) as f:
        return tensors, json.load(f)


@contextlib.contextmanager
def _quiet():
    """No "torch.distributed is ... uninitialized, assuming ... a single process" warning (one process)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class DistributedRun(DMDRun):
    """``DMDRun`` with the checkpoint folder of a multi-process job (``torch.distributed.checkpoint``) in
    ``folder``; rank 0 writes the generator file, the log and the plot. Stopped by an exception, the run keeps
    its last checkpoint (``save_on_stop``): the other ranks may be gone."""

    save_on_stop = False

    def __init__(self, trainer, folder, d: Dist, checkpoint_interval: int = 100, **kw):
        self.folder = os.fspath(folder)
        self.dist = d
        super().__init__(trainer, os.path.join(self.folder, "checkpoint"), checkpoint_interval, **kw)

    def save_checkpoint(self) -> None:
        import torch.distributed.checkpoint as dcp

        tr, d = self.trainer, self.dist
        tmp, final, old = (self.checkpoint_path + s for s in (".tmp", "", ".old"))
        if d.main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        d.barrier()
        with _quiet():
            dcp.save(_tensor_state(tr), checkpoint_id=tmp)
        d.barrier()
        if d.main:
            run = {
                "config": _config_json(tr.config),
                "step": tr.step_count,
                "generator_steps": tr.generator_steps,
                "fake_steps": tr.fake_steps,
                "sched_g": tr.sched_g.state_dict(),
                "sched_f": tr.sched_f.state_dict(),
                "rng": base64.b64encode(tr.rng.get_state().cpu().numpy().tobytes()).decode(),
                "rng_device": tr.device.type,
                "lora": tr.lora,
                "ema": tr.ema is not None,
                "gan_head": tr.gan_head is not None,
                "world": d.world,
                "run": {"latent_shape": list(tr.latent_shape), "conditionings": len(tr.conditioning)},
                "history": {k: [list(p) for p in v] for k, v in self.history.items()},
            }
            with open(os.path.join(tmp, RUN_FILE), "w") as f:
                json.dump(run, f)
            # the previous checkpoint stays complete until the new one is: a stop between the renames leaves
            # checkpoint.old, which find_checkpoint reads
            if os.path.isdir(final):
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        d.barrier()

    def resume(self) -> bool:
        import torch.distributed.checkpoint as dcp

        tr = self.trainer
        path = find_checkpoint(self.folder)
        if path is None:
            return False
        with open(os.path.join(path, RUN_FILE)) as f:
            run = json.load(f)
        mine = _config_json(tr.config)
        diff = [f.name for f in fields(DMDConfig) if f.name in run["config"] and run["config"][f.name] != mine[f.name]]
        if diff:
            raise RunError(f"resume: the checkpoint {path} was made with other settings ({diff}); {self.advice}")
        made = run["run"]
        if tuple(made["latent_shape"]) != tuple(tr.latent_shape) or made["conditionings"] != len(tr.conditioning):
            raise RunError(
                f"resume: the checkpoint {path} was made for latents {tuple(made['latent_shape'])} and "
                f"{made['conditionings']} conditionings, this run has {tuple(tr.latent_shape)} and "
                f"{len(tr.conditioning)}; {self.advice}"
            )
        for k in ("lora", "ema", "gan_head"):
            if bool(run[k]) != bool(
                {"lora": tr.lora, "ema": tr.ema is not None, "gan_head": tr.gan_head is not None}[k]
            ):
                raise RunError(f"resume: the checkpoint {path} differs from this run in {k}; {self.advice}")
        state = _tensor_state(tr)
        with _quiet():
            dcp.load(state, checkpoint_id=path)
        _set_tensor_state(tr, state)
        tr.sched_g.load_state_dict(run["sched_g"])
        tr.sched_f.load_state_dict(run["sched_f"])
        rng = torch.frombuffer(bytearray(base64.b64decode(run["rng"])), dtype=torch.uint8)
        tr.rng.set_state(rng)
        tr.step_count, tr.generator_steps, tr.fake_steps = run["step"], run["generator_steps"], run["fake_steps"]
        self.history = {k: [tuple(p) for p in v] for k, v in run["history"].items()}
        self.resumed_from = tr.step_count
        log.info("DMD run: resumed from step %d (%s, saved by %d processes)", tr.step_count, path, run["world"])
        return True

    def save_generator(
        self, path, net=None, prefix: str = "", dtype=None, info=None, title=None, use_ema=None, submodule=None
    ) -> tuple[dict, dict]:
        """The generator file (rank 0 writes; every rank must call: FSDP gathers the shards). ``submodule``: the
        file holds this submodule of the generator's denoiser (e.g. "net", the diffusion model inside
        ``ComfyDenoiser``), its keys without that name."""
        tr, d = self.trainer, self.dist
        net = unwrap(net if net is not None else tr.generator.net)
        with tr.ema_weights(use_ema):
            if _is_sharded(net):
                sd = _gathered_state(net, submodule, prefix, dtype)
            else:
                sd = generator_state_dict(net.get_submodule(submodule) if submodule else net, prefix, dtype)
        full = {**generator_info(tr), **(info or {})}
        full["ema"] = tr.ema is not None and use_ema is not False
        if d.main:
            write_generator(path, sd, full, title)
        d.barrier()
        return sd, full


def _is_sharded(net: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in net.parameters())


def _gathered_state(net: nn.Module, submodule: str | None, prefix: str, dtype) -> dict:
    """The full state dict of an FSDP-sharded network, on rank 0 (every rank takes part in the gathering)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if lora.lora_layers(net):
        raise DMDConfigError("strategy: LoRA runs use ddp")
    sd = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    head = submodule + "." if submodule else ""
    return {
        prefix + k[len(head) :]: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
        .contiguous()
        .cpu()
        for k, v in sd.items()
        if k.startswith(head)
    }


def state_bytes(trainer, teacher: nn.Module | None = None) -> dict:
    """Bytes this process holds of the run's persistent state (its shards under FSDP): the generator and fake
    score weights (with the GAN head), their AdamW moments, the EMA weights and the teacher's weights (``teacher``,
    or the real score when it is a module). Gradients (the weights' size again, during a step) and activations
    come on top. The formula this measures: docs/dmd-distributed.md."""
    from torch.distributed.tensor import DTensor

    def nbytes(t) -> int:
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    def params(m) -> int:
        return sum(nbytes(p) for p in m.parameters() if p.requires_grad) if m is not None else 0

    def opt(o) -> int:
        return sum(nbytes(v) for st in o.state.values() for v in st.values() if torch.is_tensor(v) and v.numel() > 1)

    teacher = (
        teacher if teacher is not None else (trainer.real_score if isinstance(trainer.real_score, nn.Module) else None)
    )
    return {
        "generator": params(trainer.generator.net),
        "fake_score": params(trainer.fake_score) + params(trainer.gan_head),
        "optimizers": opt(trainer.opt_g) + opt(trainer.opt_f),
        "ema": sum(nbytes(v) for v in trainer.ema.values()) if trainer.ema is not None else 0,
        "teacher": sum(nbytes(p) for p in teacher.parameters()) if teacher is not None else 0,
    }
