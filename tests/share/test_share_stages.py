import pytest

from nnzip.codec.nnz import codec_options
from nnzip.errors import NnzipError
from nnzip.evaluate import EvalConfig
from nnzip.pipeline import compress
from nnzip.recipe import load_recipe, parse_recipe
from nnzip.share import shared_weights
from nnzip.stage import Context

FAST = EvalConfig(measure_latency=False, robustness_samples=50, noise_sigmas=(0.1,),
                  fgsm_epsilons=(0.1,))


def test_deep_compression_recipe_parses():
    recipe = load_recipe("recipes/deep-compression.yaml")
    assert [step.stage.kind for step in recipe.steps] == ["prune", "cluster", "encode"]
    assert recipe.steps[1].stage.conv_bits == 8 and recipe.steps[1].stage.linear_bits == 5


@pytest.mark.parametrize("options, message", [
    ({}, "how many bits"),
    ({"bits": 17}, "less than or equal to 16"),
    ({"bits": 0}, "greater than or equal to 1"),
    ({"bits": 4, "init": "kmeans++"}, "init"),
    ({"bits": 4, "method": "dbscan"}, "method"),
    ({"linear_bits": 4, "layer_bits": {"fc1": 20}}, "from 1 to 16"),
])
def test_bad_cluster_options_fail_when_the_recipe_is_read(options, message):
    with pytest.raises(NnzipError, match=message):
        parse_recipe({"stages": [{"cluster": options}]})


def test_cluster_stage_trains_centroids_and_records_the_table(trained_mlp, digits):
    recipe = parse_recipe({"stages": [
        {"prune": {"sparsity": 0.8, "finetune_epochs": 1}},
        {"cluster": {"bits": 4, "finetune_epochs": 1, "lr": 1e-3}}]})
    context = Context(data=digits, progress=False)
    model = trained_mlp
    for step in recipe.steps:
        model = step.stage.apply(model, context)
    shared = shared_weights(model)
    assert set(shared) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert all(s.zero_code and s.centroids.dtype.is_floating_point for s in shared.values())
    assert codec_options(model) == {"huffman": False}
    table = context.details["layer_compression"]
    assert table["fc1.weight"]["shared_bytes"] < table["fc1.weight"]["pruned_bytes"] \
        < table["fc1.weight"]["dense_bytes"]
    assert context.details["layer_bits"] == {"fc1.weight": 4, "fc2.weight": 4, "fc3.weight": 4}


def test_pipeline_weighs_the_nnz_file_after_sharing(trained_mlp, digits, tmp_path):
    recipe = parse_recipe({"stages": [
        {"prune": {"sparsity": 0.8, "finetune_epochs": 0}},
        {"product_quantize": {"dim": 4, "bits": 4, "finetune_epochs": 0,
                              "layers": ["fc1", "fc2"]}},
        {"cluster": {"bits": 3, "layers": ["fc3"], "finetune_epochs": 0}},
        {"encode": {"huffman": True}}]})
    result = compress(trained_mlp, recipe, digits, out_dir=tmp_path, eval_config=FAST,
                      progress=False)
    rows = {row["stage"]: row for row in result.report["models"]}
    assert rows["cluster"]["size_bytes"] < rows["prune"]["size_bytes"] / 5
    assert rows["encode"]["size_bytes"] <= rows["cluster"]["size_bytes"]
    assert result.paths["model"].name == "model.nnz"
    assert result.paths["model"].stat().st_size == rows["encode"]["size_bytes"]
    assert "Per-layer compression" in result.paths["md"].read_text()
