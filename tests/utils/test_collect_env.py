import subprocess
import sys

import torch

from detzoo.utils.collect_env import collect_env_info, cpu_info, cpu_summary

_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile
"""

_ZEN3 = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma bmi2
"""


def _write(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


def test_cpu_info_reads_model_and_flags(tmp_path):
    model, flags = cpu_info(_write(tmp_path, _CPUINFO))
    assert model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert {"avx2", "amx_bf16", "avx512_bf16", "fpu"} <= flags and "avx" not in flags


def test_cpu_summary_lists_vector_flags_and_bf16_hardware(tmp_path):
    xeon = cpu_summary(_write(tmp_path, _CPUINFO))
    assert xeon == ("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz "
                    "(amx_bf16 amx_tile avx2 avx512_bf16 avx512bw avx512f fma; bf16 hardware: yes)")
    assert cpu_summary(_write(tmp_path, _ZEN3)) == "AMD EPYC 7B13 (avx2 fma; bf16 hardware: no)"


def test_cpu_info_without_cpuinfo_falls_back(tmp_path):
    model, flags = cpu_info(str(tmp_path / "missing"))
    assert model and flags == frozenset()
    assert "no avx2/avx512/amx" in cpu_summary(str(tmp_path / "missing"))


def test_collect_env_info_names_versions():
    info = collect_env_info()
    for expected in ("PyTorch", torch.__version__, "detzoo._C", "CPU", "torchvision", "pycocotools"):
        assert expected in info


def test_collect_env_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "detzoo.utils.collect_env"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert torch.__version__ in out.stdout
