"""Distil a denoising model into a smaller student that runs faster on the CPU.

Most users denoise on a CPU, where time per slice follows the network's FLOPs. A model trained as
a CycleGAN (unpaired, on a GPU) can be distilled: a smaller generator of the same preset learns,
with plain L1 regression, to give the teacher's output on the teacher's own training slices (low-
and full-dose, so it also learns to leave full dose alone). The targets are the teacher's outputs
on whole slices, computed once, and the student trains on whole slices too, so its instance
norms see the statistics they will see at inference. The student is written with
:func:`~ctdenoise.export.write_model`, so it carries its own change limit, graphs and int8 gate,
and its metadata records the teacher and how closely it follows it on the validation pairs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ctdenoise.checkpoints import load_checkpoint
from ctdenoise.errors import CTDenoiseError
from ctdenoise.normalization import HUNormalization
from ctdenoise.options import TTA_COPIES
from ctdenoise.runtimes.base import VIEWS, averaged_change, pad_to_multiple
from ctdenoise.types import PathLike


@dataclass(frozen=True)
class DistillSettings:
    """How the student is built and trained.

    Attributes:
        student_args: generator arguments that differ from the teacher's (e.g. ``{"ngf": 16}``).
        steps: optimiser steps.
        batch_size: whole slices per step.
        lr: Adam learning rate at the start; it decays to 1% along a cosine.
        seed: seed for the student's weights and the order of slices.
        max_slices: training slices per dose taken from the cache (evenly spread).
        target: "teacher" (the teacher's outputs) or "full" (supervised: the full-dose slice paired
            with each simulated low-dose slice, and full dose itself for full-dose inputs; the
            teacher then only lends its architecture, normalisation and metadata).
        loss: "l1" or "l2". With noisy targets (full dose carries its own noise) L2 is the one whose
            optimum is the clean image (Noise2Noise) and whose gradient grows with the error.
        crop: square crops of this many pixels (a multiple of 16), drawn anew each step, so the
            instance norms meet many fields of view; 0: whole slices.
        init: "identity" (the student starts as the identity) or "teacher" (it starts from the
            teacher's weights, which needs the teacher's layer shapes: fine-tuning, e.g. of the
            CycleGAN generator on simulated pairs, with or without its residual high-pass).
        teacher_tta: with ``target="teacher"``, the targets are the teacher's changes averaged over
            this many mirrored/rotated views (1, 2, 4 or 8; see
            :class:`~ctdenoise.options.DenoiseOptions`), so one student run gives what the teacher
            gives in that many.
        augment: each step shows the batch in one of the 8 mirrored/rotated views (drawn at
            random), and with ``target="full"`` flips the sign of the simulated noise
            (``low - full``) half the time: quantum noise is symmetric about zero, so each pair
            gives 16 pairs, and the model learns to treat every view alike.
        identity_pairs: with ``target="full"``, each full-dose slice is also an input with itself
            as the target, so the model learns to leave full dose alone. Without them it learns
            only quarter dose -> full dose, and a full-dose input gets denoised too.
        noise_scale: with ``target="full"`` and ``augment``, the simulated noise is also scaled by a
            factor drawn log-uniformly from [1 / noise_scale, noise_scale], so the model meets
            noisier and cleaner inputs than the cache's dose gives (thin slices, large patients);
            1: the cache's noise only.
    """

    student_args: dict[str, Any]
    steps: int = 1500
    batch_size: int = 2
    lr: float = 1e-3
    seed: int = 0
    max_slices: int = 64
    target: str = "teacher"
    crop: int = 0
    loss: str = "l1"
    init: str = "identity"
    teacher_tta: int = 1
    augment: bool = False
    identity_pairs: bool = True
    noise_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_slices"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CTDenoiseError(f"distillation {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise CTDenoiseError(f"distillation learning rate must be a positive number, got {self.lr!r}")
        if self.loss not in ("l1", "l2"):
            raise CTDenoiseError(f"distillation loss {self.loss!r} is unknown: use l1 or l2")
        if self.target not in ("teacher", "full"):
            raise CTDenoiseError(f"distillation target {self.target!r} is unknown: use teacher or full")
        if self.init not in ("identity", "teacher"):
            raise CTDenoiseError(f"student start {self.init!r} is unknown: use identity or teacher")
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or self.crop < 0 or self.crop % 16:
            raise CTDenoiseError(f"crop {self.crop!r} must be 0 (whole slices) or a multiple of 16: e.g. --crop 256")
        if self.teacher_tta not in TTA_COPIES or isinstance(self.teacher_tta, bool):
            raise CTDenoiseError(f"teacher views {self.teacher_tta!r} must be one of {', '.join(map(str, TTA_COPIES))}")
        for name in ("augment", "identity_pairs"):
            if not isinstance(getattr(self, name), bool):
                raise CTDenoiseError(f"distillation {name} must be true or false, got {getattr(self, name)!r}")
        if not (
            isinstance(self.noise_scale, (int, float))
            and not isinstance(self.noise_scale, bool)
            and math.isfinite(self.noise_scale)
            and self.noise_scale >= 1
        ):
            raise CTDenoiseError(
                f"noise scale must be a number of at least 1 (1: no scaling), got {self.noise_scale!r}"
            )
        if self.noise_scale > 1 and not (self.augment and self.target == "full"):
            raise CTDenoiseError("noise scaling changes the simulated noise: use it with --target full and --augment")
        if self.teacher_tta > 1 and self.target != "teacher":
            raise CTDenoiseError("teacher views average the teacher's outputs: use them with target teacher")


def _supervised_pairs(
    cache_dir: PathLike, max_slices: int, identity_pairs: bool = True
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input, target) HU slices: simulated low dose -> its full dose, and full dose -> itself if asked."""
    from ctdenoise.data import load_cache, paired_validation_slices

    pairs = paired_validation_slices(load_cache(cache_dir), split="train", max_slices=max_slices, seed=0)
    if not pairs:
        raise CTDenoiseError(
            f"cache {cache_dir} has no paired training slices: prepare it with --simulate-dose for supervised training"
        )
    return [(low, full) for full, low in pairs] + ([(full, full) for full, _ in pairs] if identity_pairs else [])


def _random_crop(x: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random ``size`` x ``size`` window of ``[1, 1, H, W]`` arrays (whole when smaller)."""
    height, width = x.shape[-2:]
    top = int(rng.integers(0, max(1, height - size + 1)))
    left = int(rng.integers(0, max(1, width - size + 1)))
    window = (..., slice(top, top + size), slice(left, left + size))
    return x[window], y[window]


def _augmented(
    x: np.ndarray, y: np.ndarray, view: int, noise_factor: float, normalization: HUNormalization
) -> tuple[np.ndarray, np.ndarray]:
    """``[1, 1, H, W]`` input and target in :data:`VIEWS` ``[view]``, the noise ``x - y`` times ``noise_factor``.

    The new input ``y + noise_factor * (x - y)`` is clipped to the normalisation's HU range, as a
    real input is.
    """
    if noise_factor != 1:
        x = normalization.normalize(normalization.denormalize(y + noise_factor * (x - y))).astype(np.float32)
    turns, mirror = VIEWS[view]
    x, y = (np.rot90(a[..., ::-1] if mirror else a, turns, axes=(2, 3)) for a in (x, y))
    return x, y


def _noise_factor(settings: DistillSettings, order: np.random.Generator) -> float:
    """The factor for one supervised pair's simulated noise: a random sign, and a log-uniform scale."""
    if settings.target != "full":
        return 1.0
    sign = -1.0 if order.random() < 0.5 else 1.0
    if settings.noise_scale == 1:
        return sign
    return sign * float(settings.noise_scale ** order.uniform(-1.0, 1.0))


def distill(
    teacher: PathLike,
    cache: PathLike,
    out: PathLike,
    settings: DistillSettings,
    *,
    progress: Optional[Callable[[int, int, float], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> tuple[Path, dict[str, Any]]:
    """Train a student of ``teacher`` on ``cache`` and write it to ``out`` (a ``.safetensors`` model).

    ``progress(step, steps, loss)`` is called after each step; ``cancel()`` stops the run (nothing
    is written). Returns the written path and the student's agreement with the teacher.
    """
    from ctdenoise.export import training_slices, validation_pairs, write_model_from_cache
    from ctdenoise.networks import build_generator, zero_residual

    teacher_model = load_checkpoint(teacher)
    normalization, multiple = teacher_model.normalization, teacher_model.size_multiple
    teacher_change = _change(teacher_model.generator, multiple, settings.teacher_tta)

    def normalized(hu: np.ndarray) -> np.ndarray:
        return normalization.normalize(hu)[None, None].astype(np.float32)

    if settings.target == "full":
        pairs = _supervised_pairs(cache, settings.max_slices, settings.identity_pairs)
        inputs = [pad_to_multiple(normalized(x), multiple) for x, _ in pairs]
        targets = [pad_to_multiple(normalized(y), multiple) for _, y in pairs]
    else:
        slices = [normalized(s) for s in training_slices(cache, settings.max_slices)]
        inputs = [pad_to_multiple(x, multiple) for x in slices]
        targets = [pad_to_multiple(x + teacher_change(x)[:, None], multiple) for x in slices]
    args = {**teacher_model.generator_args, **settings.student_args}
    torch.manual_seed(settings.seed)
    student = build_generator(teacher_model.preset, **args)
    if settings.init == "teacher":  # parameter-free options (the residual high-pass) may differ
        weights, own = teacher_model.generator.state_dict(), student.state_dict()
        added = {k for k in own.keys() - weights.keys() if k.startswith("tail_low.")}  # a new low-pass tail
        if own.keys() - added != weights.keys() or any(own[k].shape != weights[k].shape for k in weights):
            raise CTDenoiseError(
                "a student that starts from the teacher needs the teacher's layer shapes: "
                "keep its width, residual blocks and downsamplings"
            )
        student.load_state_dict(weights, strict=False)
        if added:
            zero_residual(student.tail_low)  # it starts silent: the student starts as the teacher
    else:
        zero_residual(student)
    optimizer = torch.optim.Adam(student.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, settings.steps) / settings.steps))
    )
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, x in enumerate(inputs):  # slices of one size batch together
        groups.setdefault(x.shape, []).append(index)
    sizes = list(groups.values())
    weights = np.array([len(g) for g in sizes], dtype=float) / len(inputs)
    order = np.random.default_rng(settings.seed)
    started, loss_value = time.perf_counter(), float("nan")
    student.train()
    for step in range(1, settings.steps + 1):
        if cancel is not None and cancel():
            raise CTDenoiseError("distillation cancelled: nothing was written")
        group = sizes[order.choice(len(sizes), p=weights)]
        picks = order.choice(group, size=min(settings.batch_size, len(group)), replace=False)
        chosen = [(inputs[i], targets[i]) for i in picks]
        if settings.crop:
            chosen = [_random_crop(a, b, settings.crop, order) for a, b in chosen]
        if settings.augment:  # one view per batch: its slices keep one shape
            view = int(order.integers(len(VIEWS)))
            chosen = [(a, b, _noise_factor(settings, order)) for a, b in chosen]
            chosen = [_augmented(a, b, view, factor, normalization) for a, b, factor in chosen]
        x = torch.from_numpy(np.ascontiguousarray(np.concatenate([a for a, _ in chosen])))
        y = torch.from_numpy(np.ascontiguousarray(np.concatenate([b for _, b in chosen])))
        loss = (torch.nn.functional.l1_loss if settings.loss == "l1" else torch.nn.functional.mse_loss)(student(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        if progress is not None:
            progress(step, settings.steps, loss_value)
    student.eval()
    agreement = _agreement(teacher_model, teacher_change, student, validation_pairs(cache))
    metadata = dict(teacher_model.metadata)
    metadata["generator"] = {"preset": teacher_model.preset, "args": args}
    key = "supervised" if settings.target == "full" else "distilled_from"
    training = dict(metadata.get("training") or {})
    earlier = training.get(key)
    if settings.target == "full":  # it learned the cache's pairs: they are its training data now
        from ctdenoise.data import load_cache

        teacher_data, training["data"] = training.get("data"), load_cache(cache).summary()
    metadata["training"] = {
        **training,
        key: {
            "method": f"paired {settings.loss.upper()} to the full-dose slices (simulated low dose)"
            if settings.target == "full"
            else f"{settings.loss.upper()} to the teacher's outputs"
            + (f", averaged over {settings.teacher_tta} mirrored/rotated views" if settings.teacher_tta > 1 else ""),
            "file": Path(teacher).name,
            "crop": settings.crop,
            "init": settings.init,
            "loss": settings.loss,
            "teacher_tta": settings.teacher_tta,
            "augment": settings.augment,
            **(
                {"identity_pairs": settings.identity_pairs, "noise_scale": settings.noise_scale}
                if settings.target == "full"
                else {}
            ),
            "generator_args": teacher_model.generator_args,
            "steps": settings.steps,
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            "slices": len(inputs),
            "final_loss": round(loss_value, 6),
            "seconds": round(time.perf_counter() - started, 1),
            "agreement": agreement,
            **({"teacher_data": teacher_data} if settings.target == "full" else {}),
            **({"earlier": earlier} if earlier else {}),  # a second round keeps the first one's record
        },
    }
    return write_model_from_cache(student.state_dict(), metadata, out, cache), agreement


def _change(network: torch.nn.Module, multiple: int, copies: int) -> Callable[[np.ndarray], np.ndarray]:
    """``network``'s change for normalised slices ``[n, 1, H, W]``, averaged over ``copies`` views."""

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(x)
            return (network(tensor) - tensor)[:, 0].numpy()

    def change(x: np.ndarray) -> np.ndarray:
        result = averaged_change(run, x, copies, multiple)
        assert result is not None  # run never reports out-of-memory
        return result

    return change


def _agreement(
    teacher: Any,
    teacher_change: Callable[[np.ndarray], np.ndarray],
    student: torch.nn.Module,
    pairs: list[tuple[np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """How closely the student follows the teacher (as distilled: with its views) on (full, low)
    validation pairs, in HU and PSNR."""
    if not pairs:
        return {}
    normalization = teacher.normalization
    student_change = _change(student, teacher.size_multiple, 1)
    outputs: dict[str, list[np.ndarray]] = {"teacher": [], "student": []}
    for _, low in pairs:
        x = normalization.normalize(low)[None, None].astype(np.float32)
        for name, change in (("teacher", teacher_change), ("student", student_change)):
            outputs[name].append(low + change(x)[0] * normalization.scale)

    def psnr(images: list[np.ndarray]) -> float:
        errors = [np.clip(i, -160, 240) - np.clip(full, -160, 240) for i, (full, _) in zip(images, pairs)]
        return 10 * math.log10(400**2 / float(np.mean(np.concatenate([e.ravel() ** 2 for e in errors]))))

    difference = np.concatenate([np.abs(a - b).ravel() for a, b in zip(outputs["student"], outputs["teacher"])])
    teacher_change = np.concatenate([np.abs(t - low).ravel() for t, (_, low) in zip(outputs["teacher"], pairs)])
    return {
        "slices": len(pairs),
        "psnr_teacher_db": round(psnr(outputs["teacher"]), 3),
        "psnr_student_db": round(psnr(outputs["student"]), 3),
        "mean_abs_diff_hu": round(float(difference.mean()), 3),
        "teacher_mean_abs_change_hu": round(float(teacher_change.mean()), 3),
        "p99_9_abs_diff_hu": round(float(np.percentile(difference, 99.9)), 3),
        "window_hu": [-160.0, 240.0],
    }
