"""Precision chosen by the hardware (``nav_come.core.precision``) and what the CLIs report of it."""

import json

import numpy as np
import pytest
import torch

from nav_come.core import precision
from nav_come.core.checkpoint import SHIPPED_CHECKPOINT
from nav_come.world_model import WorldModel

AVX2_ONLY = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
AVX512_NO_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_vnni"}
AVX512_BF16 = AVX512_NO_BF16 | {"avx512_bf16"}
SAPPHIRE_RAPIDS = AVX512_BF16 | {"amx_tile", "amx_bf16"}
ARM_BF16 = frozenset({"fp", "asimd", "bf16"})


@pytest.fixture
def flags(monkeypatch):
    """Set the CPU flags that the module reads, with no oneDNN cap."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)

    def set_flags(value):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(value))

    return set_flags


@pytest.mark.parametrize(
    "cpu, expected",
    [(AVX2_ONLY, "fp32"), (AVX512_NO_BF16, "fp32"), (frozenset(), "fp32"), (AVX512_BF16, "bf16"),
     (SAPPHIRE_RAPIDS, "bf16"), (ARM_BF16, "bf16")],  # fmt: skip
)
def test_auto_is_bf16_exactly_where_the_cpu_has_native_bf16(flags, cpu, expected):
    flags(cpu)
    assert precision.resolve("auto", "cpu") == expected
    assert precision.resolve(None, "cpu") == expected
    assert precision.use_bf16("auto") == (expected == "bf16")
    assert precision.cpu_report()["native_bf16"] == (expected == "bf16")


def test_forced_precisions_ignore_the_cpu(flags):
    for cpu in (AVX2_ONLY, SAPPHIRE_RAPIDS):
        flags(cpu)
        assert precision.resolve("fp32") == "fp32" and precision.resolve("bf16") == "bf16"
        assert precision.bf16_flag("fp32") is False and precision.bf16_flag("bf16") is True
        assert precision.bf16_flag("auto") is None


@pytest.mark.parametrize("isa, expected", [("AVX2", "fp32"), ("avx512_core", "fp32"), ("AVX512_CORE_BF16", "bf16"),
                                           ("AVX512_CORE_AMX", "bf16"), ("ALL", "bf16")])  # fmt: skip
def test_a_onednn_cap_below_bf16_means_fp32(flags, monkeypatch, isa, expected):
    flags(SAPPHIRE_RAPIDS)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert precision.resolve("auto") == expected


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp16'; choose one of auto, fp32, bf16, int8"):
        precision.resolve("fp16")


@pytest.mark.parametrize("cpu", [AVX2_ONLY, SAPPHIRE_RAPIDS])
def test_int8_is_asked_for_by_name_and_runs_on_the_cpu_only(flags, cpu):
    flags(cpu)
    assert precision.resolve("int8") == "int8" and precision.resolve("auto") != "int8"
    assert not precision.use_bf16("int8") and precision.bf16_flag("int8") is False
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        precision.resolve("int8", "cuda")


def test_autocast_none_follows_the_cpu(flags):
    x = torch.randn(4, 8)
    for cpu, dtype in ((AVX2_ONLY, torch.float32), (AVX512_BF16, torch.bfloat16)):
        flags(cpu)
        with precision.autocast(torch.device("cpu"), None):
            assert torch.nn.functional.linear(x, x).dtype == dtype


def test_the_report_names_the_relevant_flags(flags):
    flags(SAPPHIRE_RAPIDS | {"sse2"})
    report = precision.cpu_report()
    assert report["flags"] == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"]
    assert isinstance(report["capability"], str)


def test_cpu_flags_are_read_from_this_machine():
    precision.cpu_flags.cache_clear()
    assert isinstance(precision.cpu_flags(), frozenset)


@pytest.fixture(scope="module")
def example():
    """The shipped world model and the example's context, as frames in [0, 1]."""
    import cv2

    from plan import EXAMPLES

    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(EXAMPLES.glob("context_*.png"))]
    context = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()[None] / 255
    return context


def test_fp32_and_bf16_predictions_agree(example):
    """The shipped world model at both precisions, same noise: the frames agree to within bf16
    rounding (well above 30 dB PSNR, where the model's own error to the truth is about 25 dB)."""
    outs = {}
    for name in ("fp32", "bf16"):
        wm = WorldModel.from_pretrained(SHIPPED_CHECKPOINT, sampler_steps=1, precision=name)
        assert wm.bf16 is (name == "bf16") and wm.precision == name
        actions = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.3, 0.2], [0.5, -0.4, -0.3], [0.0, 0.0, 0.5]])
        outs[name] = wm.predict(example, actions, generator=torch.Generator().manual_seed(0))
    mse = (outs["fp32"] - outs["bf16"]).pow(2).mean().item()
    assert 0 < mse and 10 * np.log10(1 / mse) > 30
    assert (outs["fp32"] - outs["bf16"]).abs().max() < 0.25


def test_int8_predictions_agree_with_fp32(example):
    """The shipped base with its linear layers at dynamic int8, same noise: within 30 dB PSNR of fp32."""
    outs = {}
    for name in ("fp32", "int8"):
        wm = WorldModel.from_pretrained(SHIPPED_CHECKPOINT, sampler_steps=1, precision="fp32")
        if name == "int8":
            precision.quantize_int8(precision.quantize_int8(wm.dit))  # twice: the second changes nothing
            assert not any(type(m) is torch.nn.Linear for m in wm.dit.modules())
        actions = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.3, 0.2], [0.5, -0.4, -0.3], [0.0, 0.0, 0.5]])
        outs[name] = wm.predict(example, actions, generator=torch.Generator().manual_seed(0))
    mse = (outs["fp32"] - outs["int8"]).pow(2).mean().item()
    assert 0 < mse and 10 * np.log10(1 / mse) > 30


def test_int8_planners_quantise_what_does_not_train():
    """--precision int8: NWM's base and the student are quantised; with an LTM the base stays fp32
    (its adapter trains on it at test time) while the SLTM is quantised; no bf16 anywhere."""
    from eval.bench import set_precision
    from planners.methods import load_method

    def linears(module):
        return sum(type(m) is torch.nn.Linear for m in module.modules())

    nwm = load_method("nwm", SHIPPED_CHECKPOINT, precision="int8")
    assert nwm.precision == "int8" and linears(nwm.world_model.dit) == 0 and nwm.world_model.bf16 is False
    student = load_method("come-student", SHIPPED_CHECKPOINT, precision="int8")
    assert student.precision == "int8" and linears(student.denoiser.experts["student"].network) == 0
    come = load_method("come", SHIPPED_CHECKPOINT, precision="int8")
    assert linears(come.world_model.dit) > 0 and linears(come.denoiser.experts["sltm"].network) == 0
    assert come.denoiser.bf16 is False and all(e.bf16 is False for e in come.denoiser.experts.values())
    with pytest.raises(ValueError, match="cannot run at fp32 or bf16 again"):
        set_precision(nwm, "fp32")


def test_plan_json_names_its_precision(tmp_path):
    import plan

    out = tmp_path / "plan.json"
    args = ["--goal", str(plan.EXAMPLES / "goal.png"), "--candidates", "6", "--rollouts", "1", "--precision", "fp32",
            "--figure", str(tmp_path / "plan.png"), "--json", str(out)]  # fmt: skip
    assert plan.main(args) == 0
    assert json.loads(out.read_text())["precision"] == "fp32"
    with pytest.raises(SystemExit) as err:
        plan.parse_args(["--goal", "g.png", "--precision", "fp16"])
    assert err.value.code == 2
