"""Reading params.yaml, checking it before heavy work, seeding and device choice."""

import difflib
import os
import random
import re
from pathlib import Path

import numpy as np
import torch
import yaml

PARAMS_FILE = Path("params.yaml")


class _ParamsLoader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a float, as YAML 1.2 and DVC do (PyYAML's 1.1 rules need 1.0e-4)."""


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_params(path=PARAMS_FILE):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_ParamsLoader)


def problems_in_section(params, section, spec):
    """Compare params[section] with spec and return every problem found, as readable lines.

    spec maps each key to (expected type or tuple of types, check or None, rule in words).
    Unknown keys are reported with the closest valid name, so a typo never falls back to a default.
    """
    values = params.get(section)
    if not isinstance(values, dict):
        return [f"params.yaml: section '{section}' is missing or not a mapping"]
    problems = []
    for key in values:
        if key not in spec:
            close = difflib.get_close_matches(key, spec, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"params.yaml: {section}.{key} is not a known key{hint}")
    for key, (kind, check, rule) in spec.items():
        if key not in values:
            problems.append(f"params.yaml: {section}.{key} is missing ({rule})")
            continue
        value = values[key]
        # bool is an int in Python; a flag written where a number belongs is a mistake.
        wrong_bool = isinstance(value, bool) and bool not in _as_tuple(kind)
        if wrong_bool or not isinstance(value, kind):
            problems.append(f"params.yaml: {section}.{key} = {value!r} has the wrong type ({rule})")
        elif check is not None and not check(value):
            problems.append(f"params.yaml: {section}.{key} = {value!r} is out of range ({rule})")
    return problems


def _as_tuple(kind):
    return kind if isinstance(kind, tuple) else (kind,)


class ParamsError(ValueError):
    """Bad params or inputs found before any heavy work; the message lists every problem."""


def fail_if_problems(problems, what="params"):
    """Raise one ParamsError listing every problem; do nothing when the list is empty.
    (Library code raises; each stage's entry point turns it into `error: ...` and a non-zero exit.)"""
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ParamsError(f"{len(problems)} problem(s) with the {what}:\n{lines}")


# Keys shared by several stages, checked by each stage that reads them.
SHARED_SPEC = {
    "seed": (int, lambda v: v >= 0, "an integer >= 0"),
    "device": (str, lambda v: v in ("auto", "cpu", "cuda"), "one of auto, cpu, cuda"),
    "refusal": (str, lambda v: bool(v.strip()), "a non-empty answer that says the model does not know"),
}


def shared_problems(params, keys=tuple(SHARED_SPEC)):
    problems = []
    for key in keys:
        kind, check, rule = SHARED_SPEC[key]
        value = params.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or not check(value):
            problems.append(f"params.yaml: {key} = {value!r} is invalid ({rule})")
    if "device" in keys and params.get("device") == "cuda" and not torch.cuda.is_available():
        problems.append("params.yaml: device = 'cuda' but no CUDA GPU is available here "
                        "(use device: auto or cpu)")
    return problems


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def native_bf16(device):
    """Whether the device multiplies bf16 matrices in hardware: CUDA, or a CPU with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8").split()
    except OSError:  # not Linux: assume not
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def seed_everything(seed):
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Needed by cuBLAS for deterministic matrix products; harmless on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
