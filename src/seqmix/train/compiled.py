"""torch.compile for training: inductor's C++ kernels on CPU, Triton's on a GPU, and a clear fallback."""
from __future__ import annotations

import importlib.util
import os
import shutil
import warnings

import torch


def compiler_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for ``device`` here, or None: a GPU needs Triton, a CPU a C++
    compiler on PATH (``$CXX``, g++, c++ or clang++)."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (torch.compile builds its GPU kernels with it)"
        return None
    names = [os.environ["CXX"]] if os.environ.get("CXX") else []
    if not any(shutil.which(n) for n in names + ["g++", "c++", "clang++"]):
        return "no C++ compiler found on PATH ($CXX, g++, c++, clang++; inductor builds its CPU kernels with one)"
    return None


def compile_for_training(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``torch.compile(module)`` (the forward, and the backward through AOTAutograd), or ``module`` itself
    with a RuntimeWarning saying why when no compiler is available."""
    problem = compiler_problem(device)
    if problem is not None:
        warnings.warn(f"--compile: {problem}; training uncompiled", RuntimeWarning, stacklevel=2)
        return module
    return torch.compile(module)
