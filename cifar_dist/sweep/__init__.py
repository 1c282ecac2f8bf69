"""Sweeps: a YAML spec becomes numbered cells, and every cell x seed becomes one run, on SLURM or locally.

    cifar-dist sweep plan   slurm/grids/seed001_grid.yaml   # cells, parameter counts, the sbatch command
    cifar-dist sweep submit slurm/grids/seed001_grid.yaml   # sbatch the unfinished runs as one job array
    cifar-dist sweep status slurm/grids/seed001_grid.yaml   # pending / running / done / failed per run
    cifar-dist sweep run    slurm/grids/seed001_grid.yaml --local --parallel 2   # no SLURM: P subprocesses
    cifar-dist sweep resolve GRID INDEX [--shell]          # the train flags of array index INDEX

Spec (every key but `name` optional; unknown keys are errors):

    name: seed001_grid              # runs land in <out_dir>/<name>/<cell>-s<seed>/
    preset: seed001_resnet18_5m     # base preset; a `preset` axis may vary it per cell
    out_dir: runs                   # parent of the sweep directory, relative to the working directory
    fixed:                          # overrides of every cell: section.key: value
      run.epochs: 51
    grid:                           # Cartesian product; the first axis varies slowest
      run.global_batch_size: [128, 256, 512]
      optim.lookahead: [true, false]
    zip:                            # axes that vary together (equal lengths), as one more grid axis;
      optim.name: [adam, sgd]       # a list of such mappings gives several zipped groups
      optim.weight_decay: [0.0, 5.0e-4]
    random:                         # random search, crossed with the grid as its innermost axis
      samples: 32                   # number of draws (constraints may drop some)
      seed: 2                       # search seed: the same seed gives the same draws
      params:                       # drawn in the order written
        optim.lr: {loguniform: [1.0e-4, 1.0e-1]}   # floats are rounded to 4 significant digits
        model.dropout: {uniform: [0.0, 0.5]}
        model.c1: {randint: [14, 38]}              # integers, both ends included
        model.blocks: {choice: [[3, 3, 3], [7, 7, 7]]}
    seeds: [0, 1, 2]                # repeats of every cell (run.seed); an integer n means 0..n-1
    constraints:                    # parameter budget (trainable parameters at 10 classes)
      max_params: 5000000           # cells outside [min_params, max_params] are dropped from the plan
    parallel: 8                     # array tasks running at once (sbatch --array=...%8)
    sbatch: [--time=02:00:00]       # extra sbatch options (they beat the #SBATCH lines of sweep.sh)

PyYAML reads `1e-2` (no dot) as a string; the config check turns it into the number anyway.
Every cell is checked with `cifar_dist.config.resolve` and its model is built (on the meta device) to count
parameters, so a bad key or model option fails at plan time: one line (file, key, expected, found), exit 2.

Numbering: cells are c000, c001, ... in expansion order (grid axes, zip groups, random draws), counted
after the constraints, so the same spec always gives the same cells. Runs are cell-major:
array index = cell position * len(seeds) + seed position, run name `<cell>-s<seed>`, flags
`--run.out_dir=<out_dir>/<name> --run.name=<cell>-s<seed> --run.seed=<seed> --resume=auto`.
`<out_dir>/<name>/sweep.json` (written by plan, submit, run and the first array task) lists the cells
for `cifar-dist report`; SLURM logs go to `<out_dir>/<name>/slurm/%A_%a.out`, local ones to `logs/<run>.out`.

Skip and resume: a run with result.json is finished and never trained again; any other run starts with
`--resume=auto`, which continues from its last checkpoint. `submit` leaves out finished runs and runs
already in squeue; `slurm/sweep.sh` checks again when a task starts. Editing a spec: more seeds or new
cells at the end are fine, but a cell whose runs have started must keep its overrides (and the fixed ones
their values) -- plan, submit, run and resolve refuse otherwise (exit 2), as resuming its checkpoint under
another config would mix two experiments; use a new sweep name instead.

Status (`sweep status`), from the run directory, `sweep_task.json` (written by sweep.sh and the local
runner: state, exit status, job id, host, pid) and, when it answers, `squeue` (jobs named after the sweep,
which `submit` does, or with the job id recorded in sweep_task.json):
    done     result.json exists
    running  squeue lists the task as running; without squeue: the run has started (checkpoint, metrics or
             a sweep_task.json saying running) and has no result; a local run must have a live pid
    pending  squeue lists the task as pending (also after a requeue), or nothing has started yet
    failed   the last attempt ended without a result (trainer error, non-finite loss, stopped and not
             requeued, killed); resubmitting resumes it from its checkpoint

Search (adaptive, on Optuna): a `search:` block makes the spec's grid:, zip: and random.params a search
space (grid and zip axes become choices; random.samples/seed are not used; one seed):
    search:
      pruner: asha                  # asha (Optuna's SuccessiveHalvingPruner, asynchronous) | hyperband
      objective: val_acc            # a per-epoch metrics.jsonl column; accuracies maximised, losses minimised
      trials: 64                    # draws outside `constraints` are rejected and not counted
      epochs: {min: 1, max: 30, reduction_factor: 2}   # rungs at min x factor^k below max; run.epochs = max
      sampler: tpe                  # random | tpe, seeded per trial by (seed, trial number)
      seed: 0
      heartbeat: 30                 # seconds between a worker's lease renewals; a lease is stale after 3 missed
`plan` prints the rungs and the epoch cost without pruning, in the worst case and expected. P workers share
one study, <out_dir>/<name>/study.journal (Optuna's JournalStorage, file backend): `sbatch --array=0-(P-1)
slurm/sweep.sh SPEC`, `sweep submit SPEC --parallel P` or `sweep run SPEC --local --parallel P` (each runs
`sweep worker SPEC`). Trial n trains in <out_dir>/<name>/t<nnn>-s<seed>/, a normal run directory plus
trial.json (its lease), rung by rung (--run.stop_after=<rung> --resume=auto), and is told "pruned" (run kept)
when the pruner says so. A worker stopped by USR1/TERM checkpoints its trial and keeps it for its restart;
the trial of a worker that died is taken over. `sweep status` lists the trials; `cifar-dist report` adds the
study. Rules: cifar_dist.sweep.study and cifar_dist.sweep.worker; where runs train: cifar_dist.sweep.backend.
"""

# Importing a backend's module registers it (cifar_dist.sweep.backend); local first: it speaks first for a run.
from cifar_dist.sweep import local, slurm  # noqa: F401
