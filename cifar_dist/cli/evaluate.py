"""`cifar-dist evaluate RUN_DIR` and `cifar-dist predict RUN_DIR IMAGES...` (the work: cifar_dist.engine.trained)."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path

from cifar_dist.errors import EXIT_OK


def evaluate(run_dir: str, *, data: str | None = None, tta: str | None = None, weights: str = "auto",
             limit_test: int | None = None, json: bool = False) -> int:
    """Test accuracy of a trained run, overall and per class.

    Loads the run's config.yaml and its weights (--weights=auto: the best validation epoch's when the run
    kept them, else the last epoch's), evaluates them on the run's test images and prints the accuracy next
    to the one the run recorded in result.json for the same weights.

      --data=DIR         folder with the dataset's .beton files (default: the run's data.dir)
      --tta=MODE         none, flip, flip_translate or flip_diag (default: the run's own)
      --weights=WHICH    auto, best or last
      --limit_test=N     evaluate N class-balanced test images; 0 = the whole test file (default: the run's)
      --json=true        print one JSON object instead of the table
    """
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


def predict(run_dir: str, *images: str, top: int = 3, weights: str = "auto", json: bool = False) -> int:
    """The most likely classes of image files (PNG, JPEG, anything PIL reads) under a trained run's weights.

    Each image is read as RGB, resized to 32x32 when it has another size (bicubic), and normalised as the
    run's test images were. One line per image: its path, then the top classes with their probabilities.

      --top=K            how many classes to print per image
      --weights=WHICH    auto (the best validation epoch's weights when kept, else the last), best or last
      --json=true        one JSON object per image instead
    """
    from cifar_dist.engine.trained import RunError, open_run, predict_images

    if not images:
        raise RunError("cifar-dist predict: expected at least one image file after RUN_DIR")
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
