"""`lit-golf submit RUN_DIR [RUN_DIR ...] --out DIR`: the folder a records/ pull request adds.

Writes `train_gpt.py` (the runs' counted script: the package and resolved config in one file),
`requirements.txt`, `config.yaml`, each seed's `train_seed<N>.log` and `results_seed<N>.json`,
`submission.json` (upstream's fields, and the p-value of the gain over `--baseline-bpb`) and a
generated `README.md`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import shutil
import statistics
from pathlib import Path

import yaml

from lit_golf.config_files import resolve_config
from lit_golf.results import CONFIG_NAME, TRAIN_LOG_NAME, read_results
from lit_golf.submission.check import LIMIT_BYTES, SCRIPT_NAME, SUBMISSION_JSON, Runs, check, compliance
from lit_golf.submission.stats import SIGNIFICANCE, THRESHOLD_NATS, gains_in_nats, improvement_p_value
from lit_golf.tool_parser import tool_parser

TRACK = "10min_16mb"
# Where this machine keeps data and logs: not settings of the submission (DATA_DIR replaces the first).
MACHINE_PATHS = ("data.data_dir", "trainer.logger.init_args.save_dir")


def _run(run_dir: Path) -> dict:
    results = read_results(run_dir)
    for key in ("seed", "final_bpb", "final_loss", "model_bytes"):
        if results.get(key) is None:
            raise ValueError(f"{run_dir}/results.json: no {key}; submit needs runs of `lit-golf run` "
                             "(fit with GPTQExport, then the test of the artifact)")
    for name in (SCRIPT_NAME, CONFIG_NAME):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}/{name} is missing; it is written by `lit-golf run`")
    return results


def config_extras(config_text: str) -> set[str]:
    """The optional extras a resolved config needs at run time: per-group ZPAQ export needs `zpaq`."""
    flat = _flatten(yaml.safe_load(config_text) or {})
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


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def config_differences(config_text: str) -> list[tuple[str, object, object]]:
    """(key, record value, this run's value) where the run's config differs from the shipped record config."""
    record = _flatten(yaml.safe_load(Path(resolve_config("record")).read_text()))
    run = _flatten(yaml.safe_load(config_text))
    return [(key, value, run.get(key)) for key, value in record.items()
            if key in run and run[key] != value and not key.startswith(("trainer.callbacks", *MACHINE_PATHS))]


def submission_record(runs: list[dict], args: argparse.Namespace, script_bytes: int) -> dict:
    bpbs = [r["final_bpb"] for r in runs]
    record = {
        "author": args.author,
        "github_id": args.github_id,
        "name": args.name,
        "date": args.date,
        "track": TRACK,
        "val_bpb": round(statistics.fmean(bpbs), 8),
        "val_bpb_std": round(statistics.stdev(bpbs), 8) if len(bpbs) > 1 else 0.0,
        "seeds": [r["seed"] for r in runs],
        "seed_results": {
            str(r["seed"]): {
                "val_bpb": r["final_bpb"], "val_loss": r["final_loss"],
                "artifact_bytes": r["model_bytes"] + script_bytes,
                "train_time_s": r.get("train_seconds"), "eval_time_s": r.get("eval_seconds"),
            } for r in runs
        },
        "hardware": runs[0].get("hardware"),
        "pytorch_version": runs[0].get("torch_version"),
        "technique_summary": args.technique_summary,
        "baseline_bpb": args.baseline_bpb,
        "p_value": None,
    }
    if args.baseline_bpb is not None:
        gains = gains_in_nats(args.baseline_bpb, bpbs, [r["final_loss"] for r in runs])
        record["improvement_nats"] = round(statistics.fmean(gains), 6)
        record["p_value"] = improvement_p_value(gains)
    return record


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
            f"{r['model_bytes'] + script_bytes:,} | {cell(r.get('eval_seconds'), '.1f')} |")
    if record["baseline_bpb"] is not None:
        p_value = record["p_value"]
        lines += ["", f"Against a baseline of {record['baseline_bpb']} bpb: mean gain {record['improvement_nats']} "
                  f"nats per token; one-sided t-test of the gain > {THRESHOLD_NATS} nats over the seeds: p = "
                  f"{p_value if p_value is None else format(p_value, '.3g')} (needs < {SIGNIFICANCE})."]
    lines += [
        "", "## Bytes", "",
        f"`train_gpt.py` ({script_bytes:,} B) is the counted code: the whole lit_golf package (minified, compressed) "
        f"and the resolved config in one file. Each seed's total is `artifact.ptz` + `train_gpt.py`, limit "
        f"{LIMIT_BYTES:,} B.",
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


def submit(run_dirs: list[Path], args: argparse.Namespace) -> Path:
    runs = [_run(d) for d in run_dirs]
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"runs {', '.join(map(str, run_dirs))} repeat a seed ({seeds}); each seed once")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dirs[0] / SCRIPT_NAME, out / SCRIPT_NAME)
    shutil.copyfile(run_dirs[0] / CONFIG_NAME, out / CONFIG_NAME)
    extras = config_extras((out / CONFIG_NAME).read_text())
    (out / "requirements.txt").write_text("\n".join(requirements(extras)) + "\n")
    for run_dir, results in zip(run_dirs, runs, strict=True):
        shutil.copyfile(run_dir / "results.json", out / f"results_seed{results['seed']}.json")
        if (run_dir / TRAIN_LOG_NAME).is_file():
            shutil.copyfile(run_dir / TRAIN_LOG_NAME, out / f"train_seed{results['seed']}.log")
    script_bytes = (out / SCRIPT_NAME).stat().st_size
    record = submission_record(runs, args, script_bytes)
    record["compliance"] = compliance(Runs(out, runs, script_bytes, record))
    (out / SUBMISSION_JSON).write_text(json.dumps(record, indent=2) + "\n")
    differences = config_differences((out / CONFIG_NAME).read_text())
    (out / "README.md").write_text(readme(record, runs, differences, script_bytes))
    return out


def cli_main(argv: list[str]) -> int:
    parser = tool_parser("lit-golf submit", __doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders of `lit-golf run` (one per seed)")
    parser.add_argument("--out", required=True, help="the submission folder to write")
    parser.add_argument("--baseline-bpb", type=float, help="the record to beat: reports the p-value of the gain")
    parser.add_argument("--author", default="")
    parser.add_argument("--github-id", default="")
    parser.add_argument("--name", default="lit_golf submission")
    parser.add_argument("--technique-summary", default="")
    parser.add_argument("--date", default=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"))
    args = parser.parse_args(argv)
    out = submit(args.run_dirs, args)
    print(f"submission written to {out}")
    for verdict in check(out):
        print(verdict.line())
    return 0
