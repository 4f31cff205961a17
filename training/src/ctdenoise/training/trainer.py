"""CycleGAN training loop: unpaired patches in, resumable states and an exported model out.

One process trains on the CPU, one GPU or Apple MPS. Under ``torchrun`` (``WORLD_SIZE`` > 1) the
processes share one global batch, drawn from ``(seed, step)`` and split evenly between them, and
each side's loss (:mod:`ctdenoise.training.objectives`) runs under ``DistributedDataParallel``
(NCCL on GPUs, Gloo on CPUs), so gradients are averaged while the backward pass runs. The image
pool sees the whole global batch on every process. Any number of processes therefore trains the
same model, and a run resumes exactly with another number of processes. Only rank 0 writes.

Output folder layout::

    OUT/config.yaml          the resolved configuration
    OUT/last.pt              latest resumable training state (atomic)
    OUT/checkpoints/step_N.pt periodic training states (the newest ``keep_checkpoints``)
    OUT/model.safetensors    inference model exported at the end (atomic)
    OUT/metrics.jsonl        one JSON line per validation
    OUT/tb/                  TensorBoard scalars and image grids
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import yaml
from torch import nn

from ctdenoise.checkpoints import TRAIN_STATE_FORMAT, ModelCheckpoint, load_torch_safely, save_torch_atomic
from ctdenoise.errors import CTDenoiseError
from ctdenoise.fileutils import atomic_write
from ctdenoise.modelfile import build_metadata
from ctdenoise.normalization import HUNormalization
from ctdenoise.training.config import Config
from ctdenoise.training.objectives import DiscriminatorObjective, GeneratorObjective
from ctdenoise.training.pool import ImagePool

TRAIN_STATE_VERSION = 1


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    out_dir: Path
    step: int
    model_path: Optional[Path]
    metrics: dict[str, Any]
    seconds: float


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "_Dist":
        from ctdenoise.devices import torchrun_rank

        return cls(*torchrun_rank())


def _select_device(requested: str, dist: _Dist) -> torch.device:
    """The engine's device choice; under torchrun each process takes the GPU of its local rank."""
    from ctdenoise.devices import resolve_device

    device = resolve_device(requested, purpose="training")
    if device.type == "cuda" and dist.world_size > 1:
        return torch.device("cuda", dist.local_rank)
    if device.type == "mps" and dist.world_size > 1:
        raise CTDenoiseError("multi-process training needs CUDA GPUs or the CPU: set train.device to 'cuda' or 'cpu'")
    return device


def _autocast_dtype(config: Config, device: torch.device) -> Optional[torch.dtype]:
    """bf16 autocast on CUDA GPUs that support it ('auto'); full precision elsewhere."""
    if config.train.amp == "bf16" and not (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        raise CTDenoiseError("train.amp 'bf16' needs a CUDA GPU with bf16 support: set train.amp to 'auto' or 'off'")
    if config.train.amp == "off" or device.type != "cuda" or not torch.cuda.is_bf16_supported():
        return None
    return torch.bfloat16


# Config sections and keys that may change when a run is resumed; anything else must match.
RESUMABLE_CHANGES = {
    "data.cache",
    "data.num_workers",
    "data.prefetch",
    "train.max_steps",
    "train.device",
    "train.log_every",
    "train.val_every",
    "train.val_slices",
    "train.val_window",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.threads",
    "train.channels_last",
    "train.compile",
}


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts, except RESUMABLE_CHANGES."""
    keys = {f"{section}.{key}" for c in (saved, current) for section, values in c.items() for key in values}
    return sorted(
        k
        for k in keys - RESUMABLE_CHANGES
        if saved.get(k.split(".")[0], {}).get(k.split(".")[1]) != current.get(k.split(".")[0], {}).get(k.split(".")[1])
    )


class Trainer:
    """Owns the four networks, their optimizers and schedulers, and the training state."""

    def __init__(self, config: Config, out_dir: Path, *, resume: bool = False) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.dist = _Dist.from_env()
        self._init_process()
        self._init_data()
        self._init_networks()
        self._init_optimizers()
        self.step = 0
        self.metrics: dict[str, Any] = {}
        self._start_or_resume(resume)

    def _init_process(self) -> None:
        """Process group under torchrun, CPU threads, device, autocast and HU normalisation."""
        config = self.config
        self.owns_process_group = self.dist.world_size > 1 and not torch.distributed.is_initialized()
        if self.owns_process_group:
            backend = "nccl" if torch.cuda.is_available() and config.train.device != "cpu" else "gloo"
            torch.distributed.init_process_group(backend)
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        self.device = _select_device(config.train.device, self.dist)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.amp_dtype = _autocast_dtype(config, self.device)
        channels_last = config.train.channels_last and self.device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.normalization = HUNormalization(**config.normalization.__dict__)

    def _init_data(self) -> None:
        """The training cache, this process's unpaired patch sampler and (main process) validation pairs."""
        from ctdenoise.data import UnpairedPatchSampler, load_cache, paired_validation_slices

        config = self.config
        if not config.data.cache:
            raise CTDenoiseError("config data.cache is empty: run 'ctdenoise prepare' and set data.cache to its folder")
        self.cache = load_cache(config.data.cache)
        self.sampler = UnpairedPatchSampler(
            self.cache,
            split="train",
            patch_size=config.data.patch_size,
            batch_size=config.data.batch_size,
            seed=config.train.seed,
            augment=config.data.augment,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            min_body_fraction=config.data.min_body_fraction,
        )
        self.val_pairs = (
            paired_validation_slices(
                self.cache, split="val", max_slices=config.train.val_slices, seed=config.train.seed
            )
            if self.dist.is_main
            else []
        )

    def _init_networks(self) -> None:
        """Both generators and discriminators, initialised as the seed (or generators as the identity), in sync across ranks."""
        from ctdenoise.networks import build_discriminator, build_generator, zero_residual

        model = self.config.model
        torch.manual_seed(self.config.train.seed)
        self.g_f2q = build_generator(model.generator, **model.generator_args)
        self.g_q2f = build_generator(model.generator, **model.generator_args)
        if model.generator_init == "identity":
            zero_residual(self.g_f2q)
            zero_residual(self.g_q2f)
        self.d_f = build_discriminator(**model.discriminator_args)
        self.d_q = build_discriminator(**model.discriminator_args)
        for net in self.networks.values():  # the builders initialise weights N(0, 0.02) as the seed
            net.to(self.device, memory_format=self.memory_format)
        lc = self.config.loss
        objectives = (
            GeneratorObjective(self.g_f2q, self.g_q2f, (self.d_f, self.d_q), lc.lambda_cycle, lc.lambda_identity),
            DiscriminatorObjective(self.d_f, self.d_q),
        )
        self.generator_objective, self.discriminator_objective = (self._parallel(o) for o in objectives)

    def _parallel(self, objective: nn.Module) -> Callable[..., Any]:
        """The objective under DDP (several processes; rank 0's weights broadcast) and torch.compile (if set)."""
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            with warnings.catch_warnings():  # torch 2.13 renames the option; older versions lack the new name
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
                objective = DistributedDataParallel(
                    objective,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    broadcast_buffers=False,  # the only buffers are constant Gaussian kernels
                    gradient_as_bucket_view=True,
                )
        mode = self.config.train.compile
        return objective if mode == "off" else torch.compile(objective, mode=None if mode == "default" else mode)

    def _init_optimizers(self) -> None:
        """Adam for the generators and for the discriminators, their schedulers, and the image pools."""
        optim = self.config.optim
        betas = tuple(optim.betas)
        generators = itertools.chain(self.g_f2q.parameters(), self.g_q2f.parameters())
        discriminators = itertools.chain(self.d_f.parameters(), self.d_q.parameters())
        self.opt_g = torch.optim.Adam(generators, lr=optim.lr, betas=betas)
        self.opt_d = torch.optim.Adam(discriminators, lr=optim.lr, betas=betas)
        self.sched_g, self.sched_d = self._schedulers()
        self.pool_f = ImagePool(self.config.train.image_pool)
        self.pool_q = ImagePool(self.config.train.image_pool)

    def _start_or_resume(self, resume: bool) -> None:
        """Load ``last.pt`` when resuming; refuse to start over a run that exists."""
        last = self.out_dir / "last.pt"
        if resume:
            if not last.is_file():
                raise CTDenoiseError(f"--resume given but {last} does not exist: start without --resume")
            self._load_state(last)
        elif last.exists():
            raise CTDenoiseError(
                f"{self.out_dir} already holds a run (last.pt): pass --resume to continue it or choose a new --out"
            )

    @property
    def networks(self) -> dict[str, nn.Module]:
        """The four networks by their seed names."""
        return {"G_F2Q": self.g_f2q, "G_Q2F": self.g_q2f, "D_F": self.d_f, "D_Q": self.d_q}

    def _schedulers(self) -> tuple[Optional[Any], Optional[Any]]:
        o = self.config.optim
        if o.schedule == "step":  # the seed: StepLR on the generators only
            return torch.optim.lr_scheduler.StepLR(self.opt_g, step_size=o.step_size, gamma=o.gamma), None

        if o.schedule == "linear":  # the reference CycleGAN: constant, then linear to zero, on both

            def factor(step: int) -> float:
                return max(0.0, 1.0 - max(0, step - o.decay_start) / o.decay_steps)

            return (
                torch.optim.lr_scheduler.LambdaLR(self.opt_g, factor),
                torch.optim.lr_scheduler.LambdaLR(self.opt_d, factor),
            )
        return None, None

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly; loadable with ``weights_only=True``."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": TRAIN_STATE_FORMAT,
            "format_version": TRAIN_STATE_VERSION,
            "step": self.step,
            "config": self.config.to_dict(),
            "models": {
                name: {k: v.detach().cpu() for k, v in net.state_dict().items()} for name, net in self.networks.items()
            },
            "optimizers": {"G": self.opt_g.state_dict(), "D": self.opt_d.state_dict()},
            "schedulers": {
                "G": self.sched_g.state_dict() if self.sched_g else None,
                "D": self.sched_d.state_dict() if self.sched_d else None,
            },
            "pool": {"F": self.pool_f.state_dict(), "Q": self.pool_q.state_dict()},
            "rng": rng,
            "metrics": self.metrics,
            "model_metadata": self.model_metadata(),
        }

    def _load_state(self, path: Path) -> None:
        state = load_torch_safely(path)
        if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
            raise CTDenoiseError(f"{path} is not a ctdenoise training state")
        if int(state.get("format_version", 0)) > TRAIN_STATE_VERSION:
            raise CTDenoiseError(f"{path} was written by a newer ctdenoise: upgrade ctdenoise to resume it")
        changed = _config_differences(state["config"], self.config.to_dict())
        if changed:
            raise CTDenoiseError(
                f"cannot resume: config key {changed[0]} differs from the run in {path.parent} "
                f"({len(changed)} key(s) differ); use the run's config.yaml or start a new --out"
            )
        for name, net in self.networks.items():
            net.load_state_dict(state["models"][name])
        self.opt_g.load_state_dict(state["optimizers"]["G"])
        self.opt_d.load_state_dict(state["optimizers"]["D"])
        for sched, key in ((self.sched_g, "G"), (self.sched_d, "D")):
            if sched is not None and state["schedulers"][key] is not None:
                sched.load_state_dict(state["schedulers"][key])
        self.pool_f.load_state_dict(state["pool"]["F"], self.device)
        self.pool_q.load_state_dict(state["pool"]["Q"], self.device)
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step = int(state["step"])
        self.metrics = dict(state.get("metrics", {}))

    def model_metadata(self) -> dict[str, Any]:
        """Self-describing metadata for the exported inference model."""
        from ctdenoise.networks import GENERATOR_PRESETS

        c = self.config
        gen_args = {**GENERATOR_PRESETS[c.model.generator], **c.model.generator_args}
        config = c.to_dict()
        config["data"]["cache"] = Path(c.data.cache).name  # no local paths in a shared model
        return build_metadata(
            preset=c.model.generator,
            generator_args=gen_args,
            normalization=self.normalization,
            patch_size=c.data.patch_size,
            training={
                "steps": self.step,
                "data": self.cache.summary(),
                "config": config,
                "device": str(self.device),
                "world_size": self.dist.world_size,
            },
            metrics=self.metrics,
        )

    # ------------------------------------------------------------------ step
    def train_step(self, real_f: torch.Tensor, real_q: torch.Tensor) -> dict[str, torch.Tensor]:
        """One generator update then one discriminator update; returns the loss terms (detached scalars).

        ``real_f`` and ``real_q`` are this process's share of the global batch, normalised, on the device.
        """
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        for d in (self.d_f, self.d_q):
            d.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with autocast:
            total, terms, fake_f, fake_q = self.generator_objective(real_f, real_q)
        total.backward()
        self.opt_g.step()

        for d in (self.d_f, self.d_q):
            d.requires_grad_(True)
        pool_rng = np.random.default_rng([self.config.train.seed, self.step, 7])
        pooled_f = self._pooled(self.pool_f, fake_f.detach(), pool_rng)
        pooled_q = self._pooled(self.pool_q, fake_q.detach(), pool_rng)
        self.opt_d.zero_grad(set_to_none=True)
        with autocast:
            loss_d_f, loss_d_q = self.discriminator_objective(real_f, pooled_f, real_q, pooled_q)
        (loss_d_f + loss_d_q).backward()
        self.opt_d.step()
        for sched in (self.sched_g, self.sched_d):
            if sched is not None:
                sched.step()
        return {**terms, "loss_D_F": loss_d_f.detach(), "loss_D_Q": loss_d_q.detach()}

    def _pooled(self, pool: ImagePool, fakes: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """This process's share of the pool's answer to the whole global batch of fakes."""
        if pool.size == 0:
            return fakes
        everything = fakes
        if self.dist.world_size > 1:
            shares = [
                torch.empty_like(fakes, memory_format=torch.contiguous_format) for _ in range(self.dist.world_size)
            ]
            torch.distributed.all_gather(shares, fakes.contiguous())
            everything = torch.cat(shares)
        share = fakes.shape[0]
        return pool.query(everything, rng)[self.dist.rank * share : (self.dist.rank + 1) * share]

    def close(self) -> None:
        """Leave the process group this trainer started (a group left open can abort the process at exit)."""
        if self.owns_process_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_process_group = False

    def check_replicas_in_sync(self) -> None:
        """Under torchrun: verify every process holds the same weights (gradients were averaged)."""
        checksum = torch.stack(
            [p.detach().double().sum() for net in self.networks.values() for p in net.parameters()]
        ).sum()
        gathered = [torch.zeros_like(checksum) for _ in range(self.dist.world_size)]
        torch.distributed.all_gather(gathered, checksum)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"distributed replicas diverged: weight checksums {[g.item() for g in gathered]}")

    # ------------------------------------------------------------ validation
    def validate(self) -> Optional["Validation"]:
        """PSNR/SSIM/RMSE of G_Q2F(low) and of the low-dose input against the paired full dose (None without pairs)."""
        if not self.val_pairs:
            return None
        from ctdenoise.inference import denoise_array
        from ctdenoise.metrics import denoising_quality, metric_convention
        from ctdenoise.options import DenoiseOptions

        window = self.config.train.val_window
        model = ModelCheckpoint(
            path=self.out_dir / "model.safetensors", metadata=self.model_metadata(), generator=self.g_q2f
        )
        options = DenoiseOptions(
            device=str(self.device), batch_size=2, precision="auto" if self.amp_dtype else "fp32", force=True
        )
        try:
            figures, example = denoising_quality(self.val_pairs, lambda low: denoise_array(low, model, options), window)
        finally:
            self.g_q2f.train()
        metrics = {"step": self.step, **figures, "convention": metric_convention(window), "slices": len(self.val_pairs)}
        return Validation(metrics, example)

    # ------------------------------------------------------------------ save
    def save_state(self) -> Path:
        """Write last.pt (and a periodic copy), pruning old periodic copies."""
        state = self.state_dict()
        last = self.out_dir / "last.pt"
        save_torch_atomic(state, last)
        folder = self.out_dir / "checkpoints"
        keep = self.config.train.keep_checkpoints
        if keep > 0:
            save_torch_atomic(state, folder / f"step_{self.step:07d}.pt")
            for old in sorted(folder.glob("step_*.pt"))[:-keep]:
                old.unlink()
        return last

    def export(self, path: Optional[Path] = None) -> Path:
        """Write the inference model (both generators, metadata, change limit measured on the training cache)."""
        from ctdenoise.export import calibration_slices, write_model

        states = {"G_Q2F": self.g_q2f.state_dict(), "G_F2Q": self.g_f2q.state_dict()}
        calibration = calibration_slices(self.config.data.cache)
        return write_model(
            states,
            self.model_metadata(),
            path or self.out_dir / "model.safetensors",
            calibration=calibration,
            validation=self.val_pairs,
        )


@dataclass
class Validation:
    """One validation: the metrics logged and saved, and the first slice (low, denoised, full) for TensorBoard."""

    metrics: dict[str, Any]
    images: tuple[np.ndarray, np.ndarray, np.ndarray]


def _window_image(image: np.ndarray, window: list[float]) -> np.ndarray:
    low, high = window
    return np.clip((image - low) / (high - low), 0.0, 1.0).astype(np.float32)


def to_device(batch: torch.Tensor, trainer: Trainer) -> torch.Tensor:
    """A (pinned) HU batch copied to the device without blocking, then normalised there."""
    tensor = batch.to(trainer.device, non_blocking=True).contiguous(memory_format=trainer.memory_format)
    return trainer.normalization.normalize(tensor)


def train(
    config: Config,
    out_dir: Path,
    *,
    resume: bool = False,
    max_steps: Optional[int] = None,
    progress: bool = True,
    cancel: Optional[Callable[[], bool]] = None,
) -> TrainResult:
    """Train (or resume) a CycleGAN and export ``model.safetensors`` at the end.

    Args:
        config: validated configuration.
        out_dir: run folder (see the module docstring).
        resume: continue from ``out_dir/last.pt`` exactly (same batches, optimizer and pool state).
        max_steps: overrides ``config.train.max_steps`` (e.g. to extend a finished run).
        progress: show a tqdm bar (main process only).
        cancel: polled every step; when it returns True the state is saved and training stops.
    """
    config = copy.deepcopy(config)  # the caller's config stays as it was
    if max_steps is not None:
        config.train.max_steps = int(max_steps)
    start = time.perf_counter()
    trainer = Trainer(config, Path(out_dir), resume=resume)
    try:
        log = _RunLog(trainer) if trainer.dist.is_main else None
        stopped = _run_steps(trainer, log, progress, cancel)
        model_path = _finish(trainer, log, stopped)
    finally:
        trainer.close()
    return TrainResult(Path(out_dir), trainer.step, model_path, trainer.metrics, time.perf_counter() - start)


def step_loader(trainer: Trainer) -> Any:
    """A DataLoader yielding this process's (full, low) share of each remaining step's global batch.

    Workers read ahead ``data.prefetch`` batches each from the memory-mapped cache; on CUDA the
    batches arrive in pinned memory, so the copy to the GPU overlaps with compute.
    """
    from torch.utils.data import DataLoader

    from ctdenoise.data import StepDataset

    remaining = max(0, trainer.config.train.max_steps - trainer.step)
    workers = trainer.config.data.num_workers
    return DataLoader(
        StepDataset(trainer.sampler, trainer.step, remaining),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=trainer.device.type == "cuda",
        prefetch_factor=trainer.config.data.prefetch if workers else None,
    )


def _run_steps(
    trainer: Trainer, log: Optional["_RunLog"], progress: bool, cancel: Optional[Callable[[], bool]]
) -> bool:
    """Train until ``max_steps`` or a cancel; logs, validates and saves on schedule. Returns whether it was cancelled."""
    from tqdm import tqdm

    tc = trainer.config.train
    bar = tqdm(
        total=tc.max_steps, initial=trainer.step, disable=not (progress and log), unit="step", dynamic_ncols=True
    )
    try:
        for full, low in step_loader(trainer):
            losses = trainer.train_step(to_device(full, trainer), to_device(low, trainer))
            trainer.step += 1
            bar.update(1)
            step = trainer.step
            if log is not None:
                if step % tc.log_every == 0 or step == tc.max_steps:
                    bar.set_postfix(log.losses(losses))
                if tc.val_every and step % tc.val_every == 0 and step < tc.max_steps:
                    log.validation()
                if step % tc.checkpoint_every == 0 and step < tc.max_steps:
                    trainer.save_state()
            if cancel is not None and cancel():
                return True
    finally:
        bar.close()
    return False


def _finish(trainer: Trainer, log: Optional["_RunLog"], stopped: bool) -> Optional[Path]:
    """Final validation, state and model (main process); the replica check under torchrun."""
    model_path = None
    if log is not None:
        if not stopped:
            log.validation()
        trainer.save_state()
        if not stopped:
            model_path = trainer.export()
        log.close()
    if trainer.dist.world_size > 1:
        trainer.check_replicas_in_sync()
    return model_path


class _RunLog:
    """The main process's records of a run: config.yaml, metrics.jsonl and TensorBoard."""

    def __init__(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.trainer = trainer
        out_dir = trainer.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(trainer.config.to_dict(), sort_keys=False)
        atomic_write(out_dir / "config.yaml", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        _drop_metrics_after(out_dir / "metrics.jsonl", trainer.step)
        self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=trainer.step + 1 if trainer.step else None)
        self.last = (trainer.step, time.perf_counter())

    def losses(self, losses: dict[str, torch.Tensor]) -> dict[str, str]:
        """Log the loss terms (the only device sync of a step), learning rate and speed; returns the bar's postfix."""
        step, now = self.trainer.step, time.perf_counter()
        rate = (step - self.last[0]) / max(now - self.last[1], 1e-9)
        self.last = (step, now)
        values = {key: float(value) for key, value in losses.items()}
        for key, value in values.items():
            self.writer.add_scalar(f"loss/{key}", value, step)
        self.writer.add_scalar("lr/generators", self.trainer.opt_g.param_groups[0]["lr"], step)
        self.writer.add_scalar("speed/steps_per_s", rate, step)
        return {"G": f"{values['total']:.3f}", "D": f"{values['loss_D_F'] + values['loss_D_Q']:.3f}"}

    def validation(self) -> None:
        """Validate, keep the metrics on the trainer, and log them with an image grid."""
        trainer = self.trainer
        result = trainer.validate()
        if result is None:
            return
        trainer.metrics = result.metrics
        step = trainer.step
        for group in ("denoised", "low_dose_input"):
            for key, value in result.metrics[group].items():
                self.writer.add_scalar(f"val/{group}/{key}", value, step)
        window = trainer.config.train.val_window
        grid = np.concatenate([_window_image(x, window) for x in result.images], axis=1)
        self.writer.add_image("val/low_denoised_full", grid[None], step)
        with open(trainer.out_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(result.metrics) + "\n")

    def close(self) -> None:
        """Flush and close TensorBoard."""
        self.writer.close()


def _drop_metrics_after(path: Path, step: int) -> None:
    """On resume, forget validation lines written after the state being resumed."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        atomic_write(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8"))
