"""Numeric precision of the networks: fp32, or bf16 autocast where the hardware runs it natively.

bf16 autocast halves the time of a forward pass on a CPU with native bf16 instructions
(AVX-512-BF16 or AMX on x86, the BF16 extension on Arm) and on CUDA. On a CPU without
them (AVX2 only, or AVX-512 without BF16) PyTorch emulates bf16, and the same forward
is several times *slower* than fp32 (``python -m eval.bench model`` shows both).
``auto`` therefore picks bf16 only where it is native::

    precision = resolve("auto", device)        # "bf16" or "fp32"
    with autocast(device, precision == "bf16"):
        ...

The CPU's abilities are read from its flags (``/proc/cpuinfo`` on Linux, ``sysctl`` on
macOS). ``ONEDNN_MAX_CPU_ISA`` below ``AVX512_CORE_BF16`` (oneDNN then never uses the bf16
instructions) counts as no native bf16, which is also how to try the AVX2 path on a newer CPU
(``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` caps fbgemm's int8 kernels the same way)::

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 \\
        python plan.py --goal examples/goal.png

The planners also run at ``int8`` (:data:`INFERENCE_PRECISIONS`, CPU only): their denoisers' linear
layers quantised dynamically (:func:`quantize_int8`: int8 weights, activations quantised per
batch, fbgemm's kernels), everything else in fp32. It is never ``auto``'s choice: it pays on CPUs
without native bf16 (docs/results.md, "int8"), where it is asked for by name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
import warnings

import torch

PRECISIONS = ("auto", "fp32", "bf16")  # every network, training included
INFERENCE_PRECISIONS = (*PRECISIONS, "int8")  # the planners (planners.config.PlanConfig)
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 (AVX-512-BF16, AMX) and Arm (FEAT_BF16)
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "avx_vnni", "asimd", "bf16")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still include the bf16 instructions.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
                     "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT")  # fmt: skip


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, lower case ("avx2", "avx512_bf16", ...); empty when unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, Arm
                    return frozenset(value.split())
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                 timeout=2).stdout.strip()  # fmt: skip
            return frozenset({"bf16"}) if out == "1" else frozenset()
        except (OSError, subprocess.SubprocessError):
            pass
    return frozenset()


def onednn_allows_bf16() -> bool:
    """False when ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below the bf16 instructions."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return not isa or isa in _ONEDNN_BF16_ISAS


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 runs natively on ``device`` (CUDA: the GPU supports it; CPU: see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return bool(cpu_flags() & NATIVE_BF16_FLAGS) and onednn_allows_bf16()


def resolve(precision: str | None, device: str | torch.device = "cpu") -> str:
    """"auto" (or None) -> "bf16" where native on ``device``, else "fp32"; "fp32", "bf16" and
    (on a CPU) "int8" as given. Raises ValueError for anything else."""
    precision = "auto" if precision is None else precision
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(INFERENCE_PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "int8" and torch.device(device).type != "cpu":
        raise ValueError(f"--precision int8 runs on the CPU only (fbgemm's kernels), not on {device}; "
                         "use auto or bf16 there")  # fmt: skip
    return precision


def use_bf16(precision: str | None, device: str | torch.device = "cpu") -> bool:
    """Whether ``precision`` means bf16 autocast on ``device``."""
    return resolve(precision, device) == "bf16"


def bf16_flag(precision: str | None) -> bool | None:
    """A precision name as the ``bf16`` setting of a network or a training loop: "bf16" True,
    "fp32" False, "auto" (or None) None, which :func:`autocast` resolves for its device."""
    resolve(precision)  # validates the name
    return None if precision in (None, "auto") else precision == "bf16"


def autocast(device: torch.device, enabled: bool | None) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or CUDA when ``enabled``; None means ``auto`` for the device."""
    device = torch.device(device)
    if enabled is None:
        enabled = native_bf16(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type in ("cpu", "cuda"))


def cpu_report() -> dict:
    """What ``auto`` decided from: torch's CPU capability, the relevant flags, the oneDNN cap (and
    fbgemm's, which picks the int8 kernels)."""
    flags = cpu_flags()
    return {"capability": torch.backends.cpu.get_cpu_capability(),
            "flags": [f for f in REPORTED_FLAGS if f in flags],
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "fbgemm_isa": os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS"),
            "native_bf16": native_bf16("cpu")}  # fmt: skip


PRECISION_HELP = ("bf16 autocast or fp32; auto: bf16 only where the CPU/GPU runs it natively "
                  "(AVX-512-BF16, AMX, Arm BF16, CUDA)")
PLAN_PRECISION_HELP = PRECISION_HELP + "; int8: the denoisers' linear layers at dynamic int8 (CPU)"


def quantize_int8(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every ``nn.Linear`` replaced in place by a dynamic int8 one (int8 weights,
    activations quantised per batch, fbgemm's CPU kernels); for inference only, it cannot train.
    Quantising twice changes nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def add_precision_arg(p) -> None:
    """The CLIs' ``--precision auto|fp32|bf16``."""
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
