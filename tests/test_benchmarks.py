"""The epoch benchmarks run end to end and write the JSON keys the speed targets are read from.

These are smoke runs on tiny inputs: they check the scripts work, not how fast anything is.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, SHARED_MNIST


def _run(script: str, args: list[str], out: Path, table: str = "| measure | value |") -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / script), "--json", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert table in proc.stdout
    return json.loads(out.read_text())


def _check_variants(results: dict, prefix: str) -> None:
    for variant in ("machlite_train", "machlite_train_val", "plain", "machop_style"):
        assert results[f"{prefix}_{variant}_s"] > 0, variant
    assert results[f"{prefix}_machlite_over_plain"] == pytest.approx(
        results[f"{prefix}_machlite_train_s"] / results[f"{prefix}_plain_s"]
    )
    assert results[f"{prefix}_machopstyle_over_machlite"] == pytest.approx(
        results[f"{prefix}_machop_style_s"] / results[f"{prefix}_machlite_train_val_s"]
    )


def test_jsc_benchmark_writes_every_ratio(tmp_path: Path) -> None:
    args = ["--jets", "4000", "--repeats", "1", "--batch-sizes", "256", "32"]
    results = _run("jsc_epoch.py", args, tmp_path / "jsc.json")
    assert results["train_jets"] > 2000
    assert results["jsc_cache_speedup"] == pytest.approx(
        results["setup_first_s"] / results["setup_cached_s"]
    )
    _check_variants(results, "jsc_bs256")
    _check_variants(results, "jsc_bs32")
    assert results["env_cpu_count"] >= 1


@pytest.mark.slow
def test_mnist_benchmark_writes_every_ratio(tmp_path: Path) -> None:
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST copy not found in {SHARED_MNIST} (needs ../shared/data/mnist)")
    args = ["--mnist", str(SHARED_MNIST), "--repeats", "1", "--batch-sizes", "1000"]
    # machlite's variants: 3 training batches of the 55; the plain and machop-style variants
    # take no overrides and run the whole epoch
    args += ["--", "--trainer.limit_train_batches", "3"]
    results = _run("mnist_epoch.py", args, tmp_path / "mnist.json")
    _check_variants(results, "mnist_bs1000")


def test_jsc_overhead_ablation_writes_every_variant(tmp_path: Path) -> None:
    args = ["--jets", "4000", "--repeats", "1", "--batch-sizes", "256"]
    results = _run("jsc_overhead.py", args, tmp_path / "overhead.json")
    for variant in ("machlite", "no_progress_bar", "no_step_logging", "log_every_step"):
        assert results[f"jsc_bs256_{variant}_over_plain"] == pytest.approx(
            results[f"jsc_bs256_{variant}_s"] / results["jsc_bs256_plain_s"]
        )
    assert results["jsc_bs256_one_step_calls_s"] > 0


def test_startup_benchmark_writes_every_ratio(tmp_path: Path) -> None:
    results = _run("startup.py", ["--rounds", "1", "--no-warmup"], tmp_path / "startup.json")
    for name in ("import_torch", "models", "help", "fit_help"):
        assert results[f"startup_{name}_s"] > 0, name
    for name in ("models", "help"):
        assert results[f"startup_{name}_over_import_torch"] == pytest.approx(
            results[f"startup_{name}_s"] / results["startup_import_torch_s"]
        )
    assert results["rounds"] == 1


@pytest.mark.slow
def test_compiled_benchmark_merges_its_ratios_into_the_json(
    tmp_path: Path, torch_compile_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the steady-state part shares the tests' compile cache; the whole fits use their own
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(torch_compile_cache))
    out = tmp_path / "jsc.json"
    out.write_text(json.dumps({"jsc_bs200_plain_s": 1.5, "env_torch": "earlier run"}))
    args = ["--jets", "4000", "--repeats", "1", "--batch-sizes", "200", "--configs", "jsc_tiny"]
    results = _run("jsc_compiled.py", args, out)
    assert results["jsc_bs200_plain_s"] == 1.5 and results["env_torch"] == "earlier run"
    assert results["compiled_env_cpu_count"] >= 1 and results["compiled_train_jets"] > 2000
    assert results["jsc_bs200_compiled_over_plain"] == pytest.approx(
        results["jsc_bs200_compiled_train_s"] / results["jsc_bs200_compiled_run_plain_s"]
    )
    assert results["jsc_bs200_compiled_over_machlite_eager"] > 0
    for name in ("first", "cached"):
        assert results[f"jsc_tiny_fit_compiled_{name}_over_eager"] == pytest.approx(
            results[f"jsc_tiny_fit_compiled_{name}_s"] / results["jsc_tiny_fit_eager_s"]
        )


def test_qat_benchmark_writes_its_ratio(tmp_path: Path) -> None:
    args = ["--jets", "4000", "--repeats", "1"]
    results = _run("jsc_qat.py", args, tmp_path / "qat.json")
    assert results["jsc_tiny_bs256_qat_over_float"] == pytest.approx(
        results["jsc_tiny_bs256_qat_s"] / results["jsc_tiny_bs256_float_s"]
    )


@pytest.mark.slow
def test_hls4ml_agreement_table_runs_fit_and_export(tmp_path: Path) -> None:
    pytest.importorskip("hls4ml", reason='needs the hw extra: pip install -e ".[hw]"')
    args = ["--networks", "jsc_tiny", "--quants", "int8_4", "--epochs", "1", "--jets", "3000"]
    args += ["--work", str(tmp_path / "w")]
    results = _run("hls4ml_agreement.py", args, tmp_path / "h.json", "| network | quantization |")
    (row,) = results["rows"]
    assert results["data"] == "SYNTHETIC" and row["network"] == "jsc_tiny"
    assert row["samples"] > 500 and 0.0 <= row["class_agreement"] <= 1.0


def test_trials_to_best_counts_from_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from search_grid_vs_tpe import trials_to

    assert trials_to([0.5, 0.7, 0.69, 0.71], 0.71, 0.005) == 4
    assert trials_to([0.5, 0.7, 0.69, 0.71], 0.71, 0.02) == 2
    assert trials_to([0.5, 0.6], 0.71, 0.005) == 3  # never reached: len + 1


@pytest.mark.slow
def test_verilog_hardware_table_runs_qat_export_and_synthesis(tmp_path: Path) -> None:
    pytest.importorskip("alkaid", reason="needs the hw extra")
    from machlite.errors import MachliteError
    from machlite.hw import tools

    try:
        tools.require_yosys()
        tools.require_verilator()
    except MachliteError as err:  # the tool's own line: which package to install
        pytest.skip(str(err))
    args = ["--networks", "jsc_tiny", "--quants", "hw_int4_2", "--epochs", "1"]
    args += ["--jets", "3000", "--work", str(tmp_path / "work")]
    results = _run("verilog_hardware.py", args, tmp_path / "hw.json", table="| network |")
    assert results["data"] == "SYNTHETIC"
    (row,) = results["rows"]
    assert (row["network"], row["quant"]) == ("jsc_tiny", "hw_int4_2")
    assert row["identical"] == 1.0 and row["rtl_sim"]["identical"] == 1.0
    assert row["synthesis"]["luts"] > 0 and row["synthesis"]["dsps"] == 0
    for step in ("trace", "rtl_sim", "synthesis"):
        assert row["seconds"][step] > 0, step


def _front_row(quant: str, sparsity: float, luts: int, accs: list[float]) -> dict:
    mean = sum(accs) / len(accs)
    return {
        "quant": quant,
        "sparsity": sparsity,
        "luts": luts,
        "test_acc_mean": mean,
        "test_acc_min": min(accs),
        "test_acc_max": max(accs),
    }


def test_mnist_front_keeps_the_points_nothing_beats_and_draws_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The front's selection and plot; its fits, tests and exports are the CLI's, tested
    elsewhere (a run of the whole script takes minutes of QAT and yosys)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from mnist_mlp_front import draw, pareto, point_args

    rows = [
        _front_row("w6a6", 0.0, 50_000, [97.0, 97.2]),
        _front_row("w4a4", 0.0, 26_000, [95.0, 95.4]),
        _front_row("w4a4", 0.5, 30_000, [94.0, 94.2]),  # beaten by w4a4 dense: fewer LUTs
        _front_row("w2a2", 0.75, 3_000, [80.0, 81.0]),
    ]
    front = {(r["quant"], r["sparsity"]) for r in pareto(rows)}
    assert front == {("w6a6", 0.0), ("w4a4", 0.0), ("w2a2", 0.75)}
    draw(rows, tmp_path / "front.png")
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert point_args("w4a4", 0.0, 5)[-1].endswith("configs/quant/mnist_mlp_hw_w4a4.yaml")
    assert point_args("w4a4", 0.5, 5)[-4:] == [
        "--model.pruning.sparsity",
        "0.5",
        "--model.pruning.end_epoch",
        "5",
    ]
    for quant in ("w6a6", "w4a4", "w2a2"):  # every point's config is committed
        assert Path(point_args(quant, 0.0, 5)[1]).is_file()
