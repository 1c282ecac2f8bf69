"""Evaluation: one split, the evaluations at the end of an epoch, and the final ones that write result.json."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from cifar_dist.augment import TTA_ON_LOGITS, tta_views, tta_weights
from cifar_dist.config import flatten, to_dict
from cifar_dist.engine import checkpoint as ckpt
from cifar_dist.engine.devices import eval_model
from cifar_dist.engine.logs import confusion_figure

if TYPE_CHECKING:
    from cifar_dist.engine.session import Session


@torch.no_grad()
def evaluate(model, loader, normalize, accelerator, num_classes: int, tta: str = "none") -> dict:
    """Accuracy (%), mean loss and confusion matrix over the whole split, summed over processes.

    With TTA the softmax probabilities of the views are averaged (the logits, weighted, for flip_diag); the
    loss is the NLL of that mean.
    Per batch everything stays on the device (no `.item()`, no host tensor, no `bincount`, whose output size
    needs the max label on the host): the host reads the sums once, after the last batch.
    """
    was_training = model.training
    model.eval()
    stats = torch.zeros(3, device=accelerator.device, dtype=torch.float64)  # correct, loss sum, count
    confusion = torch.zeros(num_classes * num_classes, device=accelerator.device, dtype=torch.float64)
    for x, y in loader:
        x = normalize(x)
        with accelerator.autocast():
            if tta == "none":
                logp = F.log_softmax(model(x).float(), dim=1)
            elif tta in TTA_ON_LOGITS:
                views = tta_views(x, tta)
                logits = sum(w * model(v).float() for v, w in zip(views, tta_weights(tta, len(views))))
                logp = F.log_softmax(logits, dim=1)
            else:
                probs = torch.stack([F.softmax(model(v).float(), dim=1) for v in tta_views(x, tta)]).mean(0)
                logp = probs.clamp_min(1e-12).log()
        pred = logp.argmax(1)
        stats += torch.stack([(pred == y).sum().double(), F.nll_loss(logp, y, reduction="sum").double(),
                              torch.full((), y.numel(), device=y.device, dtype=torch.float64)])
        confusion.index_add_(0, y * num_classes + pred, torch.ones_like(pred, dtype=torch.float64))
    stats = accelerator.reduce(stats, reduction="sum")
    confusion = accelerator.reduce(confusion, reduction="sum")
    model.train(was_training)
    n = max(float(stats[2]), 1.0)
    return {"acc": 100.0 * float(stats[0]) / n, "loss": float(stats[1]) / n,
            "confusion": confusion.view(num_classes, num_classes).long().cpu().tolist()}


def should_stop_early(history: list[float], patience: int, window: int, drop: float, start: int) -> bool:
    """Early-stopping rules on validation accuracies (%, one per evaluated epoch, oldest first).

    patience: stop when the best value is `patience` or more evaluations old.
    window rule (seed 004): from evaluation `start` on, stop when the latest value is more than
    `drop` points below the best of the last `window` values (the latest included).
    """
    if not history:
        return False
    if patience and len(history) - 1 - int(np.argmax(history)) >= patience:
        return True
    if window and len(history) >= max(start, 1):
        recent = history[-window:]
        return history[-1] < max(recent) - drop
    return False


def _eval(s: Session, model, loader, tta: str = "none") -> dict:
    return evaluate(model, loader, s.normalize, s.accelerator, len(s.classes), tta)


def evaluate_epoch(s: Session, row: dict[str, Any]) -> bool:
    """The evaluations due after epoch row["epoch"] (1-based), added to `row`; keeps the best weights.

    Returns whether an early-stopping rule fires on the validation history.
    """
    epoch, r, ema, state = row["epoch"], s.cfg.run, s.parts.ema, s.state
    if epoch % r.eval_every and epoch != r.epochs:
        return False
    plain = eval_model(s.accelerator, s.parts.model)
    for split, loader in (("val", s.loaders.val), ("test", s.loaders.test)):
        if loader is not None:
            out = _eval(s, plain, loader)
            row[f"{split}_acc"], row[f"{split}_loss"] = out["acc"], out["loss"]
            if ema is not None:
                row[f"ema_{split}_acc"] = _eval(s, ema.module, loader)["acc"]
    if "val_acc" not in row:
        return False
    state.val_history.append(row["val_acc"])
    if row["val_acc"] > state.best_val_acc:
        state.best_val_acc, state.best_epoch = row["val_acc"], epoch
        if s.accelerator.is_main_process:
            ckpt.save_best(plain, ema, s.ckpt_dir, epoch, row["val_acc"])
    return should_stop_early(state.val_history, r.early_stop_patience, r.early_stop_window, r.early_stop_drop,
                             r.early_stop_start)


def _test_with_tta(s: Session, model) -> tuple[dict, dict]:
    """Test-split evaluation of `model` without and with the run's TTA (the same dict when TTA is off)."""
    plain = _eval(s, model, s.loaders.test)
    return plain, (_eval(s, model, s.loaders.test, s.cfg.run.tta) if s.cfg.run.tta != "none" else plain)


def finish(s: Session, status: str, first_step_s: float | None = None) -> dict[str, Any]:
    """Final evaluations (final and best weights, with TTA), result.json, hparams, confusion matrix.

    result.json's timings: `train_s`, the training seconds of all epochs (device synchronised at each epoch's
    end, evaluation excluded); `first_step_s`, seconds from this session's launch to the end of its first
    optimizer step (start-up, data loading, compilation included); `wall_s`, the whole run."""
    state, acc, ema = s.state, s.accelerator, s.parts.ema
    plain = eval_model(acc, s.parts.model)
    final, final_tta = _test_with_tta(s, plain)
    res_final = {"test_acc": final["acc"], "test_loss": final["loss"], "test_acc_tta": final_tta["acc"]}
    if ema is not None:
        res_final["ema_test_acc"] = _eval(s, ema.module, s.loaders.test)["acc"]
    best = {"epoch": state.epoch, "val_acc": None, "test_acc": final["acc"], "test_acc_tta": final_tta["acc"]}
    saved = ckpt.load_best(s.ckpt_dir) if state.best_epoch else None
    if saved is not None:
        best_model = copy.deepcopy(plain)
        best_model.load_state_dict(saved["model"])  # keys without prefixes on both sides (eval_model)
        b, b_tta = _test_with_tta(s, best_model)
        best = {"epoch": state.best_epoch, "val_acc": state.best_val_acc, "test_acc": b["acc"],
                "test_acc_tta": b_tta["acc"]}
    rows = s.logger.files.metrics_rows() if acc.is_main_process else []
    ips = [row["images_per_s"] for row in rows if "images_per_s" in row]
    result = {
        "name": s.cfg.run.name, "preset": s.cfg.preset, "status": status, "epochs": state.epoch,
        "params": s.n_params, "world_size": acc.num_processes, "final": res_final, "best": best,
        "images_per_s": float(np.mean(ips)) if ips else None,
        "wall_s": state.wall_seconds,
        "train_s": float(sum(row["epoch_s"] for row in rows if "epoch_s" in row)) if rows else None,
        "first_step_s": first_step_s,
    }
    if acc.is_main_process:
        log_final(s, result, final["confusion"])
    s.logger.finish(result)
    return result


def log_final(s: Session, result: dict[str, Any], confusion: list[list[int]]) -> None:
    """TensorBoard after the final evaluation: the confusion matrix, the result in the text tab, HParams.

    The HParams metrics are the last values of per-epoch series (test and validation accuracy, images/s,
    wall time), so none is a chart of one point; the TTA accuracy, the one value without a series, is
    logged (and shown) only when TTA ran."""
    final, epoch, log = result["final"], s.state.epoch, s.logger
    title = f"final weights (epoch {epoch}): test accuracy {final['test_acc']:.2f}%"
    log.figure("test/confusion_matrix", confusion_figure(confusion, s.classes, title), epoch)
    log.text("run/result", result_markdown(result, tta=s.cfg.run.tta != "none"), epoch)
    tags = {"epoch/test_acc": "final test acc (%)"}
    if s.loaders.val is not None:
        tags.update({"epoch/val_acc": "final val acc (%)", "epoch/best_val_acc": "best val acc (%)"})
    tags.update({"epoch/images_per_s": "images/s (last epoch)", "epoch/wall_s": "wall time (s)"})
    if s.cfg.run.tta != "none":
        log.scalar("test/acc_tta", final["test_acc_tta"], epoch)
        tags["test/acc_tta"] = f"final test acc, tta {s.cfg.run.tta} (%)"
    log.hparams(flatten(to_dict(s.cfg)), tags, {"params": s.n_params})


def result_markdown(result: dict[str, Any], tta: bool = True) -> str:
    """result.json as a two-column markdown table (integers as integers, percentages with two decimals); the
    TTA accuracies only when TTA ran (`tta`), since otherwise they repeat the plain ones."""
    rows = []
    for key, value in result.items():
        for k, v in (value.items() if isinstance(value, dict) else [("", value)]):
            if k.endswith("_tta") and not tta:
                continue
            name = f"{key}.{k}" if k else key
            shown = f"{v:,.2f}" if isinstance(v, float) else ("" if v is None else str(v))
            rows.append(f"| {name} | {shown} |")
    return "\n".join(["| result | value |", "|---|---|", *rows])


def summary_line(s: Session, result: dict[str, Any]) -> str:
    """The run's last line on stdout (the TTA accuracy only when TTA ran)."""
    final = result["final"]
    tta = f" (tta {s.cfg.run.tta} {final['test_acc_tta']:.2f}%)" if s.cfg.run.tta != "none" else ""
    return (f"done: test acc {final['test_acc']:.2f}%{tta}, "
            + (f"best val epoch {result['best']['epoch']}" if s.loaders.val is not None else "no validation split")
            + f", result in {s.logger.files.result}")
