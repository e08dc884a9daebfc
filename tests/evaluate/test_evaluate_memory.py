from torch import nn

from nnzip.evaluate.memory import peak_memory_bytes


def test_peak_memory_sees_the_big_intermediate_output():
    model = nn.Linear(1000, 10000)
    param_bytes = 4 * (1000 * 10000 + 10000)
    output_bytes = 64 * 10000 * 4
    peak = peak_memory_bytes(model, (1000,), batch_size=64)
    assert peak - param_bytes >= output_bytes
    # One output tensor is all a Linear allocates: the count must not double it.
    assert peak - param_bytes < 2 * output_bytes


def test_peak_memory_grows_with_batch_size():
    model = nn.Sequential(nn.Linear(100, 2000), nn.ReLU(), nn.Linear(2000, 10))
    assert peak_memory_bytes(model, (100,), batch_size=64) > peak_memory_bytes(model, (100,), 1)


def test_freed_intermediates_do_not_accumulate():
    # Ten layers each produce a 64 x 512 float output, but a Sequential frees each one once the
    # next layer has run: at most two are alive at a time.
    model = nn.Sequential(*[nn.Linear(512, 512) for _ in range(10)])
    param_bytes = 10 * 4 * (512 * 512 + 512)
    activation_bytes = 64 * 512 * 4
    peak = peak_memory_bytes(model, (512,), batch_size=64)
    assert 2 * activation_bytes <= peak - param_bytes <= 3 * activation_bytes
