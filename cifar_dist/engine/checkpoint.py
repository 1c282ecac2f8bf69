"""Atomic checkpoints that load nothing able to run code, and resume on another number of processes.

`checkpoints/last/` holds everything a resume needs, each part in a format that is data only:
    model.safetensors    weights of the unwrapped model (no DDP `module.`, no compile `_orig_mod.` prefix),
                         so a run resumes with another number of processes or with --model.compile toggled
    optimizer.pt, ema.pt, lookahead.pt, scaler.pt
                         state dicts (torch.save; read back with torch.load(weights_only=True), which
                         refuses any pickled object other than tensors and plain containers); the files
                         are read by name, so another file (the scheduler.pt of older checkpoints) is ignored
    rng_<rank>.pt        RNG states of process <rank>: torch (and CUDA) as uint8 tensors, numpy's key as a
                         tensor, python's as plain lists of ints
    train_state.json     TrainState: epoch, position in it, running sums, best accuracy, early-stop history
    checkpoint.json      format, world size, accelerator step, file list (written last: marks it complete)
It is written to `.last.tmp`, then `last` becomes `.last.old` (the previous checkpoint, kept) and
`.last.tmp` becomes `last`, so a kill or a full disk at any moment leaves a complete checkpoint.

A resume reads `last`, or `.last.old` when a file of `last` is missing or does not load (saying so in
one line); when neither loads it stops with one line naming the file (`CheckpointError`). RNG states
are restored per rank when the world size is the same; otherwise every process is re-seeded from
(run.seed, step, rank) with one printed line.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from cifar_dist.config import RESUME_MODES, Config, ConfigError, dump_yaml
from cifar_dist.engine.devices import eval_model
from cifar_dist.engine.rundir import agree, check_fresh, check_resume_config, disk_errors, first_error
from cifar_dist.engine.train_state import TrainState, train_state
from cifar_dist.errors import InputError
from cifar_dist.files import atomic_write_bytes
from cifar_dist.run_dir import CHECKPOINT_META as META
from cifar_dist.run_dir import TRAIN_STATE as STATE
from cifar_dist.run_dir import RunDir

LAST, BEST, OLD, TMP = "last", "best", ".last.old", ".last.tmp"
BEST_MODEL = f"{BEST}/model.pt"  # the best validation epoch's weights (`save_best`)
MODEL = "model.safetensors"
FORMAT = 2  # 1 was accelerate's save_state (pickles): not read any more


class CheckpointError(InputError):
    """A checkpoint file is missing, does not load, or cannot be written; the message names it."""


# ------------------------------------------------------------------------------------------ the parts


def stateful_parts(parts) -> dict[str, Any]:
    """Everything with a state dict besides the model, by file stem: optimizer, EMA, lookahead, the fp16
    scaler. The schedule is a function of the global step (in train_state.json): nothing to save."""
    named = {"optimizer": parts.optimizer, "ema": parts.ema, "lookahead": getattr(parts, "lookahead", None),
             "scaler": getattr(parts.accelerator, "scaler", None)}
    return {k: v for k, v in named.items() if v is not None}


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain data (no pickled objects)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    out = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
           "numpy": [int(pos), int(has_gauss), float(gauss)], "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(s: dict[str, Any]) -> None:
    """Restore `rng_state()`'s output; raises on anything malformed."""
    pos, has_gauss, gauss = s["numpy"]
    version, internal, gauss_next = s["python"]
    keys = s["numpy_keys"].numpy().astype(np.uint32)
    if keys.shape != (624,) or not all(isinstance(v, int) for v in internal):
        raise ValueError("malformed numpy or python RNG state")
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), float(gauss)))
    random.setstate((int(version), tuple(internal), gauss_next))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _model_bytes(model: torch.nn.Module) -> bytes:
    # copies: safetensors refuses tensors that share memory (tied weights load back through both names)
    tensors = model.state_dict().items()
    return safetensors.torch.save({k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors})


# ---------------------------------------------------------------------------------------------- saving


def save(parts, ckpt_dir: Path, state: TrainState) -> None:
    """Write `last` atomically (see the module docstring). Call on every process; a write error on any of
    them (a full disk) stops all with one line, leaving the previous checkpoint as it was."""
    acc = parts.accelerator
    tmp = ckpt_dir / TMP
    last = find_last(ckpt_dir)
    keep = f"the previous checkpoint in {last} is intact" if last else "no checkpoint was saved yet"

    def start() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        with disk_errors(tmp, keep):
            tmp.mkdir(parents=True)

    def write() -> None:  # every process: its RNG states; the main process: everything else
        files = {f"rng_{acc.process_index}.pt": _torch_bytes(rng_state())}
        if acc.is_main_process:
            files[MODEL] = _model_bytes(eval_model(acc, parts.model))
            files.update({f"{k}.pt": _torch_bytes(v.state_dict()) for k, v in stateful_parts(parts).items()})
            files[STATE] = json.dumps(asdict(state)).encode()
        for name, data in files.items():
            with disk_errors(tmp / name, keep):
                atomic_write_bytes(tmp / name, data)

    def commit() -> None:  # checkpoint.json is written last: it marks the folder complete
        meta = {"format": FORMAT, "world_size": acc.num_processes, "accelerator_step": acc.step,
                "files": sorted(p.name for p in tmp.iterdir() if not p.name.startswith("."))}
        with disk_errors(tmp / META, keep):
            atomic_write_bytes(tmp / META, json.dumps(meta).encode())
        last, old = ckpt_dir / LAST, ckpt_dir / OLD
        shutil.rmtree(old, ignore_errors=True)
        if last.exists():
            os.replace(last, old)
        os.replace(tmp, last)

    error = first_error(acc, start) or first_error(acc, write, everywhere=True) or first_error(acc, commit)
    if error:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(error)


def save_best(model: torch.nn.Module, ema, ckpt_dir: Path, epoch: int, val_acc: float) -> None:
    """Weights of the best validation epoch (and its EMA), written atomically to best/model.pt; `model` is
    `devices.eval_model`'s (keys without prefixes, like `last`)."""
    path = ckpt_dir / BEST_MODEL
    payload = {"model": model.state_dict(), "epoch": epoch, "val_acc": val_acc}
    if ema is not None:
        payload["ema"] = ema.module.state_dict()
    with disk_errors(path, f"the previous {path} is intact"):
        atomic_write_bytes(path, _torch_bytes(payload))


def _check_best(ckpt_dir: Path, model: torch.nn.Module) -> None:
    """best/model.pt is absent or holds this model's weights; else CheckpointError, one line naming the file."""
    path = ckpt_dir / BEST_MODEL
    saved = load_best(ckpt_dir)
    if saved is None:
        return
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights = saved.get("model") if isinstance(saved, dict) else None
    got = {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()} if isinstance(weights, dict) else {}
    if got != want:
        diff = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
        raise CheckpointError(f"{path}: does not fit this run (expected the weights of this model, found other "
                              f"keys or shapes: {', '.join(diff[:3])})")


def load_best(ckpt_dir: Path) -> dict | None:
    p = ckpt_dir / BEST_MODEL
    return _read(p, _torch_load) if p.is_file() else None


def load_weights(ckpt_dir: Path, which: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model weights a finished run evaluated, read without running any pickled code.

    which: "best" (best/model.pt, the best validation epoch) or "last" (last/model.safetensors with
    lookahead's closing sync applied, as the run's final evaluation did). Returns the state dict (keys
    without prefixes) and {"epoch", "val_acc"} (val_acc None for "last"). CheckpointError names a missing or
    damaged file."""
    if which == BEST:
        saved = _read(ckpt_dir / BEST_MODEL, _torch_load)
        if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
            raise CheckpointError(f"{ckpt_dir / BEST_MODEL}: expected the saved best weights, found "
                                  f"{type(saved).__name__}")
        return saved["model"], {"epoch": saved.get("epoch"), "val_acc": saved.get("val_acc")}
    last = ckpt_dir / LAST
    _read(last / META, _json_load)  # written last: a folder without it is incomplete
    state = _read(last / STATE, _json_load)
    weights = _read(last / MODEL, safetensors.torch.load_file)
    if (last / "lookahead.pt").is_file():  # the closing sync: every float weight becomes the slow copy
        slow = _read(last / "lookahead.pt", _torch_load)
        weights = {k: slow.get(k, v) if v.is_floating_point() else v for k, v in weights.items()}
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return weights, {"epoch": epoch, "val_acc": None}


# --------------------------------------------------------------------------------------------- loading


def _torch_load(path: Path) -> Any:
    with warnings.catch_warnings():  # a refused file is reported in one line, not with torch's warnings too
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def _json_load(path: Path) -> Any:
    return json.loads(path.read_text())


def _read(path: Path, load) -> Any:
    """`load(path)`, or CheckpointError naming the file (missing, truncated, refused by weights_only, ...)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load(path)
    except Exception as e:  # noqa: BLE001 -- any failure to parse a file is reported the same way
        raise CheckpointError(f"{path}: cannot load ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    if isinstance(e, pickle.UnpicklingError):
        return "refused: it holds pickled objects, not only tensors and plain data"
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {text[:160]}"


@dataclass
class Snapshot:
    """A checkpoint read into memory (nothing applied yet)."""

    path: Path
    meta: dict[str, Any]
    state: TrainState
    tensors: dict[str, Any]  # file name -> what it held
    rng: dict[str, Any] | None  # this process's RNG states; None when the world size differs


def read(path: Path, parts) -> Snapshot:
    """Read checkpoint folder `path` for this process; CheckpointError names the first bad file."""
    acc = parts.accelerator
    meta = _read(path / META, _json_load)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("world_size"), int):
        raise CheckpointError(f"{path / META}: not a checkpoint of format {FORMAT} (found {str(meta)[:80]})")
    # loader steps per epoch (unknown to parts without a Schedule, as in unit tests: then not checked)
    steps = getattr(parts.schedule, "steps_per_epoch", None)
    steps = None if steps is None else steps * getattr(acc, "gradient_accumulation_steps", 1)
    state = _read(path / STATE, lambda p: train_state(_json_load(p), steps))
    tensors = {MODEL: _read(path / MODEL, safetensors.torch.load_file)}
    tensors.update({f"{k}.pt": _read(path / f"{k}.pt", _torch_load) for k in stateful_parts(parts)})
    rng = None
    if meta["world_size"] == acc.num_processes:
        rng = _read(path / f"rng_{acc.process_index}.pt", _torch_load)
    return Snapshot(path, meta, state, tensors, rng)


def apply(snap: Snapshot, parts, seed: int) -> None:
    """Load a snapshot into the model, optimizer, schedule, EMA, ... and the RNGs of this process."""
    acc = parts.accelerator
    targets = {MODEL: eval_model(acc, parts.model), **{f"{k}.pt": v for k, v in stateful_parts(parts).items()}}
    for name, obj in targets.items():
        _apply(snap.path / name, lambda o=obj, n=name: o.load_state_dict(snap.tensors[n]))
    if snap.rng is not None:
        _apply(snap.path / f"rng_{acc.process_index}.pt", lambda: set_rng_state(snap.rng))
    else:
        from accelerate.utils import set_seed

        set_seed((seed + 1_000_003 * snap.state.global_step) % 2**31, device_specific=True)
        acc.print(f"resume: {snap.path} was written by {snap.meta['world_size']} processes, this run has "
                  f"{acc.num_processes}: RNG states re-seeded from run.seed, step {snap.state.global_step} and rank")
    acc.step = int(snap.meta.get("accelerator_step", 0))


def _apply(path: Path, load) -> None:
    try:
        load()
    except Exception as e:  # noqa: BLE001 -- a state that does not fit is reported like an unreadable file
        raise CheckpointError(f"{path}: does not fit this run ({_first_line(e)})") from None


def find_last(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint folder (`last`, else `.last.old`), complete or not; None without any."""
    return next((p for p in (ckpt_dir / LAST, ckpt_dir / OLD) if p.is_dir()), None)


def check_start(accelerator, run_dir: Path, mode: str) -> None:
    """Before any data is read: `--resume` is known and the run directory may take this run (one run, one
    folder: `cifar_dist.engine.rundir.check_fresh`); every process stops with the main process's error."""
    if mode not in RESUME_MODES:
        raise ConfigError(f"--resume: expected one of {', '.join(RESUME_MODES)}, found {mode!r}")
    ckpt_dir = RunDir(run_dir).checkpoints
    error = first_error(accelerator, lambda: check_fresh(run_dir, mode, find_last(ckpt_dir) is not None))
    if error:
        raise CheckpointError(error)


def resume(parts, run_dir: Path, mode: str, cfg: Config) -> TrainState | None:
    """`--resume`: "none" starts fresh; "auto" loads the newest checkpoint that loads, after checking the
    config against the run's config.yaml; "force" does the same whatever the config says (`mode` was
    checked by `check_start`)."""
    ckpt_dir, acc = RunDir(run_dir).checkpoints, parts.accelerator
    candidates = [p for p in (ckpt_dir / LAST, ckpt_dir / OLD) if p.is_dir()]
    if mode == "none" or not candidates:
        return None
    check_resume_config(run_dir, dump_yaml(cfg), mode == "force", acc.print)
    errors = []
    for path in candidates:
        error = ""
        try:
            snap = read(path, parts)
            apply(snap, parts, cfg.run.seed)
        except CheckpointError as e:
            error = str(e)
        error = agree(acc, error)
        if not error:
            # best/model.pt is read at the end of the run: checked now, before anything is written
            best = first_error(acc, lambda: _check_best(ckpt_dir, eval_model(acc, parts.model)))
            if best:
                raise CheckpointError(f"{best}; remove it to resume without the best-epoch weights")
            if errors:
                acc.print(f"resume: {errors[0]}; resumed from {path} instead")
            return snap.state
        errors.append(error)
    fallback = f"; {errors[1]}" if len(errors) > 1 else f"; no older checkpoint ({ckpt_dir / OLD}) to fall back to"
    raise CheckpointError(errors[0] + fallback + "; another --run.name starts the run afresh")
