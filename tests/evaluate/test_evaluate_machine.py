import torch

from nnzip.evaluate.machine import CPU_FLAGS_OF_INTEREST, machine_info


def test_machine_info_describes_cpu_threads_and_versions():
    info = machine_info(threads=3)
    assert set(info) == {"cpu_model", "cpu_flags", "cores", "threads", "torch_version",
                         "python_version", "platform"}
    assert info["threads"] == 3
    assert info["torch_version"] == torch.__version__
    assert info["cpu_model"]
    assert set(info["cpu_flags"]) <= set(CPU_FLAGS_OF_INTEREST)
