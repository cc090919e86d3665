"""`lit-golf submit RUN_DIR [RUN_DIR ...] --out DIR`: the folder a records/ pull request adds.

Writes `train_gpt.py` (the runs' counted script: the package and resolved config in one file),
`requirements.txt`, `config.yaml`, each seed's `train_seed<N>.log` and `results_seed<N>.json`,
`submission.json` (upstream's fields, and the p-value of the gain over `--baseline-bpb`) and a
generated `README.md`.

It signs only what it verified: each run's artifact and script are the sizes its results state, its final
score is the one its test logged, and every run was launched with one config. Any run that fails is
refused in one line before anything is written; the folder is built beside `--out` and renamed into place
at the end, so a failure never leaves a half-written `--out`, and an existing submission is replaced only
with `--overwrite`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import shutil
import tempfile
from pathlib import Path

import yaml

from lit_golf.results import CONFIG_NAME, TRAIN_LOG_NAME
from lit_golf.submission.check import (
    LIMIT_BYTES,
    SCRIPT_NAME,
    SUBMISSION_JSON,
    Seed,
    bytes_problem,
    check,
    compliance,
    read_mapping,
    require_folder,
    run_seed,
    score_problem,
    submission_runs,
)
from lit_golf.submission.stats import SIGNIFICANCE, THRESHOLD_NATS, seed_summary
from lit_golf.tool_output import disk_errors_as_one_line, output_folder, replace_folder
from lit_golf.tool_parser import tool_parser

TRACK = "10min_16mb"
# Settings a submission's seeds may differ in: the seeds (training's `seed_everything`, the shard order's
# `data.seed`; SEED replaces the first when the script runs), and where each run kept its data, logs,
# checkpoints and artifact (this machine's paths; DATA_DIR replaces the first). Every other key (the
# calibration seeds too: they choose the export's batches) must be the same in every run.
SEED_KEYS = ("seed_everything", "data.seed")
MACHINE_PATHS = ("data.data_dir", "trainer.logger", "trainer.default_root_dir", "checkpoint.dirpath", "ckpt_path",
                 "gptq.config.out_dir", "model.artifact", "model.training.compile_cache")
RESULTS_NEEDED = ("seed", "final_bpb", "final_loss", "model_bytes", "code_bytes")


def per_run_key(key: str) -> bool:
    """A config key that is not a setting of the submission (a seed or a path of this machine)."""
    return key in SEED_KEYS or any(key == path or key.startswith(path + ".") for path in MACHINE_PATHS)


def verified_run(run_dir: Path) -> Seed:
    """`run_dir`'s seed, refused in one line unless its files say what its results state."""
    require_folder(run_dir)
    seed = run_seed(run_dir)
    for key in RESULTS_NEEDED:
        if seed.results.get(key) is None:
            raise ValueError(f"{seed.results_path}: no {key}; submit needs runs of `lit-golf run` "
                             "(fit with GPTQExport, then the test of the artifact)")
    for name in (SCRIPT_NAME, CONFIG_NAME, TRAIN_LOG_NAME):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}/{name} is missing; it is written by `lit-golf run`")
    problem = bytes_problem(seed) or score_problem(seed)
    if problem:
        raise ValueError(problem)
    return seed


def read_config(run_dir: Path) -> dict:
    """A run's `config.yaml` as flat dotted keys; a broken file is one line."""
    return flatten(read_mapping(run_dir / CONFIG_NAME, yaml.safe_load, yaml.YAMLError, "restore the run's config"))


def check_one_config(run_dirs: list[Path]) -> None:
    """Refuse runs launched with different settings (seeds and machine paths aside: `per_run_key`)."""
    first = read_config(run_dirs[0])
    for run_dir in run_dirs[1:]:
        other = read_config(run_dir)
        keys = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k) and not per_run_key(k))
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            raise ValueError(f"{run_dirs[0]} and {run_dir} were launched with different settings: "
                             f"{', '.join(keys[:5])}{more}; a submission's seeds share one config")


def config_extras(config_text: str) -> set[str]:
    """The optional extras a resolved config needs at run time: per-group ZPAQ export needs `zpaq`."""
    flat = flatten(yaml.safe_load(config_text) or {})
    return {"zpaq"} if flat.get("gptq.config.per_group.enabled") else set()


def requirements(extras: set[str] = frozenset()) -> list[str]:
    """lit_golf's install requirements (what train_gpt.py imports), plus those of the named extras."""
    try:
        required = importlib.metadata.requires("lit_golf") or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError("lit_golf is not installed (pip install -e .): its requirements cannot be listed") from None
    wanted = []
    for requirement in required:
        name, _, marker = requirement.partition(";")
        extra = marker.split("extra ==")[-1].strip().strip("'\"") if "extra ==" in marker else None
        if extra is None:
            wanted.append(requirement)  # with any environment marker it has
        elif extra in extras:
            wanted.append(name.strip())
    return list(dict.fromkeys(wanted))


def flatten(tree, prefix: str = "") -> dict:
    """A config's leaves under dotted keys (`{"model.gpt.vocab_size": 8192}`; lists are leaves), each after `prefix`."""
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def config_differences(config_text: str) -> list[tuple[str, object, object]]:
    """(key, record value, this run's value) where the run's resolved config differs from the record's.

    The record's as the CLI resolves it, every default filled in: record.yaml states only what differs from the
    code's defaults, so the file alone missed every switch that is off by default and on in the run (frontier.yaml's
    gates, LQER, ZPAQ). Imported here: Lightning and the model load only when a README is written.
    """
    from lit_golf.lightning_cli import printed_config

    record = flatten(printed_config(["fit", "--config", "record"]))
    run = flatten(yaml.safe_load(config_text))
    return [(key, value, run.get(key)) for key, value in record.items()
            if key in run and run[key] != value and not key.startswith("trainer.callbacks") and not per_run_key(key)]


def submission_record(runs: list[dict], args: argparse.Namespace) -> dict:
    return {
        "author": args.author,
        "github_id": args.github_id,
        "name": args.name,
        "date": args.date,
        "track": TRACK,
        **seed_summary(runs, args.baseline_bpb),
        "hardware": runs[0].get("hardware"),
        "pytorch_version": runs[0].get("torch_version"),
        "technique_summary": args.technique_summary,
    }


def readme(record: dict, runs: list[dict], differences: list, script_bytes: int) -> str:
    lines = [
        f"# {record['name']}", "",
        f"**val_bpb {record['val_bpb']:.5f}** ({len(runs)}-seed mean, std {record['val_bpb_std']:.5f}) | "
        f"{record['hardware']} | lit_golf {runs[0].get('lit_golf_version')}, torch {record['pytorch_version']}", "",
        *([record["technique_summary"], ""] if record["technique_summary"] else []),
        "## What differs from the record config (configs/record.yaml)", "",
    ]
    if differences:
        lines += ["| setting | record | this submission |", "| --- | --- | --- |"]
        lines += [f"| `{key}` | {old} | {new} |" for key, old, new in differences]
    else:
        lines.append("Nothing: the record's settings.")
    lines += [
        "", "## Results per seed", "",
        "| seed | steps | train s | pre-quant bpb | post-quant bpb | TTT bpb | final bpb | val_loss (nats) | "
        "bytes (model + code) | eval s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(value, fmt: str) -> str:
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    for r in runs:
        lines.append(
            f"| {r['seed']} | {cell(r.get('steps'), 'd')} | {cell(r.get('train_seconds'), '.1f')} | "
            f"{cell(r.get('val_bpb_pre_quant'), '.5f')} | {cell(r.get('val_bpb_post_quant'), '.5f')} | "
            f"{cell(r.get('ttt_bpb'), '.5f')} | {r['final_bpb']:.5f} | {r['final_loss']:.5f} | "
            f"{r['model_bytes'] + r['code_bytes']:,} | {cell(r.get('eval_seconds'), '.1f')} |")
    if record["baseline_bpb"] is not None:
        p_value = record["p_value"]
        lines += ["", f"Against a baseline of {record['baseline_bpb']} bpb: mean gain {record['improvement_nats']} "
                  f"nats per token; one-sided t-test of the gain > {THRESHOLD_NATS} nats over the seeds: p = "
                  f"{p_value if p_value is None else format(p_value, '.3g')} (needs < {SIGNIFICANCE})."]
    lines += [
        "", "## Bytes", "",
        f"`train_gpt.py` ({script_bytes:,} B) is the counted code: the whole lit_golf package (minified, compressed) "
        f"and the resolved config in one file. Each seed's total is its `artifact.ptz` + the `train_gpt.py` its "
        f"run counted (the embedded config differs by the seed), limit {LIMIT_BYTES:,} B.",
        "", "## Reproduce", "",
        "```bash",
        "pip install -r requirements.txt",
        f"DATA_DIR=./data SEED={runs[0]['seed']} torchrun --standalone --nproc_per_node=8 train_gpt.py",
        "```", "",
        "`train_gpt.py` unpacks lit_golf into a temporary folder and runs `lit-golf run` with `config.yaml`: "
        "training on the wall clock, GPTQ export, then the phased-TTT evaluation of the artifact. "
        "The run writes its log, `results.json` and the artifact under `logs/`.",
        "", "## Files", "",
        "`train_gpt.py`, `requirements.txt`, `config.yaml` (the resolved config), `train_seed<N>.log`, "
        "`results_seed<N>.json` (what each run measured; `lit-golf check` reads them), `submission.json`.", "",
    ]
    return "\n".join(lines)


def check_out(out: Path, run_dirs: list[Path], overwrite: bool) -> None:
    """`--out` may be new, an empty folder, or (with `overwrite`) an earlier submission; never a run folder
    or a folder holding one (replacing it would delete the runs)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a folder for the submission")
    for run_dir in run_dirs:
        if out.resolve() == run_dir.resolve() or out.resolve() in run_dir.resolve().parents:
            raise ValueError(f"--out {out} holds the run {run_dir}; write the submission to another folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / SUBMISSION_JSON).is_file():
            raise ValueError(f"--out {out} is a folder that is not a submission (no {SUBMISSION_JSON}); "
                             "choose a new --out")
        if not overwrite:
            raise ValueError(f"--out {out} already holds a submission; pass --overwrite to replace it, or choose "
                             "a new --out")


def write_submission(folder: Path, run_dirs: list[Path], seeds: list[Seed], args: argparse.Namespace,
                     requirements_text: str) -> None:
    """Every file of the submission into `folder` (a fresh one)."""
    shutil.copyfile(run_dirs[0] / SCRIPT_NAME, folder / SCRIPT_NAME)
    shutil.copyfile(run_dirs[0] / CONFIG_NAME, folder / CONFIG_NAME)
    (folder / "requirements.txt").write_text(requirements_text)
    for run_dir, seed in zip(run_dirs, seeds, strict=True):
        shutil.copyfile(seed.results_path, folder / f"results_seed{seed.results['seed']}.json")
        shutil.copyfile(run_dir / TRAIN_LOG_NAME, folder / f"train_seed{seed.results['seed']}.log")
    runs = [seed.results for seed in seeds]
    record = submission_record(runs, args)
    record["compliance"] = compliance(submission_runs(folder, record))
    (folder / SUBMISSION_JSON).write_text(json.dumps(record, indent=2) + "\n")
    differences = config_differences((folder / CONFIG_NAME).read_text())
    (folder / "README.md").write_text(readme(record, runs, differences, (folder / SCRIPT_NAME).stat().st_size))


def submit(run_dirs: list[Path], args: argparse.Namespace) -> Path:
    seeds = [verified_run(d) for d in run_dirs]
    numbers = [seed.results["seed"] for seed in seeds]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"runs {', '.join(map(str, run_dirs))} repeat a seed ({numbers}); each seed once")
    check_one_config(run_dirs)
    requirements_text = "\n".join(requirements(config_extras((run_dirs[0] / CONFIG_NAME).read_text()))) + "\n"
    out = Path(args.out)
    check_out(out, run_dirs, args.overwrite)
    target = out.resolve()  # `--out .` has a name and a parent once resolved
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=output_folder(target.parent, "--out")))
    try:
        with disk_errors_as_one_line("--out", out, unchanged=f"{out} is unchanged"):
            built = scratch / target.name
            built.mkdir()
            write_submission(built, run_dirs, seeds, args, requirements_text)
            replace_folder(built, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def cli_main(argv: list[str]) -> int:
    parser = tool_parser("lit-golf submit", __doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders of `lit-golf run` (one per seed)")
    parser.add_argument("--out", required=True, help="the submission folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace the submission already in --out")
    parser.add_argument("--baseline-bpb", type=float, help="the record to beat: reports the p-value of the gain")
    parser.add_argument("--author", default="")
    parser.add_argument("--github-id", default="")
    parser.add_argument("--name", default="lit_golf submission")
    parser.add_argument("--technique-summary", default="")
    parser.add_argument("--date", default=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"))
    args = parser.parse_args(argv)
    if args.baseline_bpb is not None and not (math.isfinite(args.baseline_bpb) and args.baseline_bpb > 0):
        raise ValueError(f"--baseline-bpb {args.baseline_bpb}: not a positive number (the val_bpb of the record to beat)")
    out = submit(args.run_dirs, args)
    print(f"submission written to {out}")
    for verdict in check(out):
        print(verdict.line())
    return 0
