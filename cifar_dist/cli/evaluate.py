"""`cifar-dist evaluate RUN_DIR` and `cifar-dist predict RUN_DIR IMAGES...`: their options (`EvaluateArgs`,
`PredictArgs`, parsed once by `cifar_dist.runner.run_schema`) and what they print (the work:
cifar_dist.engine.trained)."""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from pathlib import Path

from cifar_dist.config import CHOICES, WEIGHTS
from cifar_dist.errors import EXIT_OK
from cifar_dist.schema import opt

_WEIGHTS_HELP = "which weights: auto = the best validation epoch's when the run kept them, else the last epoch's"


@dataclass(frozen=True)
class _Run:
    run_dir: str = opt(help="a run directory (runs/<name>) with its config.yaml and checkpoints/")


@dataclass(frozen=True)
class EvaluateArgs(_Run):
    """Test accuracy of a trained run, overall and per class.

    Loads the run's config.yaml and its weights, evaluates them on the run's test images and prints the
    accuracy next to the one the run recorded in result.json for the same weights.
    """

    data: str | None = opt(None, "folder with the dataset's .beton files (default: the run's data.dir)", metavar="DIR")
    tta: str | None = opt(None, "test-time augmentation (default: the run's own)", metavar="MODE",
                          choices=CHOICES["run.tta"])
    weights: str = opt("auto", _WEIGHTS_HELP, metavar="WHICH", choices=WEIGHTS)
    limit_test: int | None = opt(None, "evaluate N class-balanced test images; 0 = the whole test file "
                                       "(default: the run's)", metavar="N")
    json: bool = opt(False, "print one JSON object instead of the table")


@dataclass(frozen=True)
class PredictArgs(_Run):
    """The most likely classes of image files (PNG, JPEG, anything PIL reads) under a trained run's weights.

    Each image is read as RGB, resized to 32x32 when it has another size (bicubic), and normalised as the
    run's test images were. One line per image: its path, then the top classes with their probabilities.
    """

    images: tuple[str, ...] = opt(help="one or more image files")
    top: int = opt(3, "how many classes to print per image", metavar="K")
    weights: str = opt("auto", _WEIGHTS_HELP, metavar="WHICH", choices=WEIGHTS)
    json: bool = opt(False, "one JSON object per image instead")


def evaluate(run_dir: str, *, data: str | None = None, tta: str | None = None, weights: str = "auto",
             limit_test: int | None = None, json: bool = False) -> int:
    """Print the test accuracy of `run_dir`'s weights, overall and per class (the options: `EvaluateArgs`)."""
    from cifar_dist.engine.trained import evaluate_run, open_run

    run = open_run(Path(run_dir), weights, data)
    out = evaluate_run(run, tta, limit_test)
    recorded = run.recorded
    if json:
        print(jsonlib.dumps({"run_dir": run_dir, "weights": run.weights, "epoch": run.epoch, **out,
                          "recorded": recorded}))
        return EXIT_OK
    d = run.cfg.data
    print(f"{run_dir}: {run.cfg.model.name}, {run.describe()}; {out['n']} test images of {d.name} in {d.dir}")
    print(f"test accuracy {out['acc']:.2f}% (loss {out['loss']:.4f})" + _was(recorded.get("test_acc")))
    if out["tta_acc"] is not None:
        print(f"test accuracy with tta {out['tta']}: {out['tta_acc']:.2f}%"
              + (_was(recorded.get("test_acc_tta")) if out["tta"] == run.cfg.run.tta else ""))
    width = max(len(c) for c, _, _ in out["per_class"])
    print("per class:")
    for name, correct, total in out["per_class"]:
        acc = f"{100.0 * correct / total:6.2f}%" if total else "      -"
        print(f"  {name:<{width}}  {acc}  ({correct}/{total})")
    return EXIT_OK


def _was(value) -> str:
    return f"; the run recorded {value:.2f}%" if isinstance(value, (int, float)) else ""


def predict(run_dir: str, images: tuple[str, ...], *, top: int = 3, weights: str = "auto", json: bool = False) -> int:
    """Print the top classes of each of `images` under `run_dir`'s weights (the options: `PredictArgs`)."""
    from cifar_dist.engine.trained import RunError, open_run, predict_images

    paths = [Path(p) for p in images]
    for p in paths:
        if not p.is_file():
            raise RunError(f"{p}: image file not found")
    run = open_run(Path(run_dir), weights)
    for row in predict_images(run, paths, top):
        if json:
            print(jsonlib.dumps({"path": str(row["path"]), "resized": row["resized"], "top": row["top"]}))
            continue
        classes = ", ".join(f"{c} {100 * q:.1f}%" for c, q in row["top"])
        print(f"{row['path']}: {classes}" + (" (resized to 32x32)" if row["resized"] else ""))
    return EXIT_OK
