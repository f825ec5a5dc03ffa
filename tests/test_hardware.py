"""Device and precision choices: what `auto` picks, and what is refused."""

import pytest
import torch

from mt.files import InputError
from mt.hardware import cpu_has_bf16, select_device, select_precision

EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
OLDER = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\nbugs\t\t: avx512_bf16_not_a_flag\n"


def test_bf16_is_recognized_from_the_cpu_flags_alone():
    assert cpu_has_bf16(EPYC) and cpu_has_bf16(EPYC.replace("avx512_bf16", "amx_bf16"))
    assert not cpu_has_bf16(OLDER) and not cpu_has_bf16("")


def test_auto_precision_on_cpu_is_bf16_exactly_where_the_cpu_has_it():
    cpu = torch.device("cpu")
    assert select_precision("auto", cpu) == ("bf16" if cpu_has_bf16() else "fp32")
    assert select_precision("fp32", cpu) == "fp32" and select_precision("bf16", cpu) == "bf16"
    with pytest.raises(InputError, match="precision=fp16 needs CUDA"):
        select_precision("fp16", cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_auto_is_the_cpu_and_cuda_is_refused_in_one_line():
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="device=cuda but no CUDA device is visible"):
        select_device("cuda")
