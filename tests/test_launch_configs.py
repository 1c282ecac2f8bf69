"""Every `accelerate launch` command the README shows, and each launch/*.yaml, parsed and validated by
accelerate's own launcher code (its argument parser and `_validate_launch_command`, which reads the config
file and fills the process count), on the CPU: a command that accelerate would refuse fails here."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.helpers import REPO


def readme_launch_commands() -> list[str]:
    """The `accelerate launch ...` lines of the README's shell blocks."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip().startswith("accelerate launch")]


def validate(argv: list[str]):
    """accelerate's parse and validation of `accelerate launch ARGV` (nothing is started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(argv)
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_the_readme_shows_a_command_per_launch_file():
    used = {re.search(r"--config_file (\S+)", c).group(1) for c in readme_launch_commands()}
    assert {"launch/cpu.yaml", "launch/1gpu.yaml", "launch/multi_gpu.yaml"} <= used, used


@pytest.mark.parametrize("command", readme_launch_commands())
def test_every_readme_launch_command_passes_accelerates_validation(command, monkeypatch):
    monkeypatch.chdir(REPO)
    args, defaults = validate(shlex.split(command)[2:])
    assert defaults is not None and args.num_processes >= 1 and args.training_script in ("cifar_dist.train",)
    if "multi_gpu.yaml" in command:
        assert args.multi_gpu and args.num_processes == 8 and args.mixed_precision == "bf16"


def test_multi_gpu_yaml_needs_a_process_count_and_takes_one_from_the_command_line(monkeypatch):
    """What the README and `make run LAUNCH=multi_gpu` work around: the file holds no count on purpose."""
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match="manually pass in `--num_processes`"):
        validate(["--config_file", "launch/multi_gpu.yaml", "-m", "cifar_dist.train"])
    args, _ = validate(["--config_file", "launch/multi_gpu.yaml", "--num_processes=4", "-m", "cifar_dist.train"])
    assert args.multi_gpu and args.num_processes == 4 and args.gpu_ids == "all"


def test_make_run_names_the_process_count_for_multi_gpu():
    import subprocess

    out = subprocess.run(["make", "-n", "-o", "data", "run", "LAUNCH=multi_gpu", "NPROC=8"], cwd=REPO,
                         capture_output=True, text=True, timeout=60).stdout
    line = next(x for x in out.splitlines() if "accelerate launch" in x)
    argv = shlex.split(line.rstrip("\\"))
    assert argv[argv.index("launch") + 1:][:3] == ["--config_file", "launch/multi_gpu.yaml", "--num_processes=8"]
    validate(argv[argv.index("launch") + 1:] + ["--preset=fast"])


@pytest.mark.parametrize("name, extra", [
    ("cpu", []), ("1gpu", []), ("multi_gpu", ["--num_processes=2"]),
    # slurm/train.sh passes these (see the file's header)
    ("multi_node", ["--num_machines=2", "--num_processes=16", "--machine_rank=0", "--main_process_ip=10.0.0.1",
                    "--main_process_port=29500"]),
])
def test_each_launch_file_validates_with_what_its_header_says_to_pass(name, extra, monkeypatch):
    monkeypatch.chdir(REPO)
    args, defaults = validate(["--config_file", f"launch/{name}.yaml", *extra, "-m", "cifar_dist.train"])
    assert args.num_processes >= 1
    assert args.multi_gpu == (name != "1gpu")
