"""Where machlite's remaining JSC overhead goes: one feature switched off (or on) at a time.

Measured in ONE run, variants interleaved and repeated (median of --repeats), on SYNTHETIC
JSC data of the real size (about 789,600 training jets), JSC-Tiny (--config and --network
choose others), one training epoch:
  plain            the plain PyTorch loop of jsc_epoch.py (variant c)
  machlite         machlite's fit with configs/jsc_tiny.yaml as committed (variant a)
  no_progress_bar  the same with --trainer.enable_progress_bar false
  no_step_logging  no progress bar, and step scalars only at step 0
                   (--trainer.log_every_n_steps 1000000000)
  log_every_step   step scalars at every optimizer step (--trainer.log_every_n_steps 1)
  one_step_calls   one optimizer step per Lightning call (--model.steps_per_call 1)
Each variant's time is printed over the plain loop's; the JSON keys are
``jsc_bs{B}_{variant}_over_plain`` and ``jsc_bs{B}_{variant}_s``.

    python benchmarks/jsc_overhead.py --json overhead.json
"""

import sys
import tempfile
from functools import partial
from pathlib import Path

import lightning.pytorch as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, jsc_cli_args, machlite_epoch, plain_epoch, report  # noqa: E402
from jsc_epoch import jsc_parser  # noqa: E402

from machlite.accelerator import stop_gpu_probe  # noqa: E402
from machlite.datasets import JSCDataModule  # noqa: E402
from machlite.models import NETWORKS  # noqa: E402

NO_BAR = ("--trainer.enable_progress_bar", "false")
#: Variant name -> machlite overrides on top of the committed config.
VARIANTS: dict[str, tuple[str, ...]] = {
    "machlite": (),
    "no_progress_bar": NO_BAR,
    "no_step_logging": (*NO_BAR, "--trainer.log_every_n_steps", "1000000000"),
    "log_every_step": ("--trainer.log_every_n_steps", "1"),
    "one_step_calls": ("--model.steps_per_call", "1"),
}


def main() -> None:
    """Run the ablation and print the table."""
    args = jsc_parser(__doc__.splitlines()[0]).parse_args()

    stop_gpu_probe()  # as a machlite CPU run does, for every variant (performance.md)
    work = Path(tempfile.mkdtemp(prefix="machlite-overhead-"))
    data_dir = work / "data"
    print(f"SYNTHETIC JSC data, {args.jets} jets, in {data_dir}", flush=True)
    dm = JSCDataModule(data_dir=str(data_dir), source="synthetic", synthetic_jets=args.jets)
    dm.prepare_data()
    dm.setup("fit")
    x, y = dm.splits["train"]
    network = NETWORKS[args.network]

    results: dict[str, float | int] = {"train_jets": len(y)}
    for bs in args.batch_sizes:
        print(f"batch size {bs}:", flush=True)
        base = partial(jsc_cli_args, args.config, args.jets, data_dir, bs, work / "runs")
        machlite_epoch(base("--trainer.limit_train_batches", "2"), validate=True)  # warm-up
        variants = {
            name: partial(machlite_epoch, base(*extra), validate=False)
            for name, extra in VARIANTS.items()
        }
        variants["plain"] = lambda bs=bs: plain_epoch(network(), x, y, bs, seed=0)
        med = interleaved(variants, args.repeats)
        for name, seconds in med.items():
            results[f"jsc_bs{bs}_{name}_s"] = seconds
            if name != "plain":
                results[f"jsc_bs{bs}_{name}_over_plain"] = seconds / med["plain"]
    report(args.json, results)


if __name__ == "__main__":
    pl.seed_everything(0, verbose=False)
    main()
