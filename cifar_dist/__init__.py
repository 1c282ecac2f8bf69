"""cifar_dist: distributed CIFAR-10 training -- FFCV data, Accelerate DDP, timm recipes, SLURM sweeps."""

__version__ = "0.1.0"
