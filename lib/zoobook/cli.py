"""``zoobook``: run stages, build the book, list models and what their stages declare.

    zoobook list
    zoobook stages yolact_edge --backend ascend   # per stage: upstream, parameters, reads, writes, inputs
    zoobook run yolact_edge --stages export,convert --backend onnxruntime -p batch_sizes=[1,4]
    zoobook book --profile default            # run every model's stages, then build the book
    zoobook book --no-run                     # build the book from the records already there
    zoobook status [yolact_edge]              # each stage: ok, stale (and why), failed, blocked...
    zoobook book --jobs 2                     # two models at once; --scheduler tcp://host:8786 on a cluster
    zoobook run yolact_edge --force           # rerun stages that are up to date
    zoobook compare runs-before/default default   # what changed between two runs, flagged
    zoobook book --no-run --compare runs-before/default   # the book, with that page
    zoobook locate semask --candidate onnxruntime-fp16     # the first operator that diverges in fp16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from zoobook.backends import BACKENDS
from zoobook.models import MODELS
from zoobook.paths import PROFILES


def _parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"-p expects KEY=VALUE, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _execute(args: argparse.Namespace, models: list[str], stages: list[str] | None, overrides: dict) -> int:
    """Run the stages of ``models``: one line as each starts and ends, a bar over all of them.
    Returns 1 when a stage failed or was blocked, 130 when interrupted, else 0."""
    from tqdm import tqdm

    from zoobook.runner import LockHeld, chosen_stages, run_chains

    total = sum(len(chosen_stages(m, stages)) for m in models)
    bar = tqdm(total=total, unit="stage", desc="stages", dynamic_ncols=True, file=sys.stderr,
               disable=None)  # a bar on a terminal; in a log, the lines alone
    counts: dict[str, int] = {}

    def started(model: str, stage: str) -> None:
        tqdm.write(f"{model:12s} {stage:14s} ...")

    def done(r) -> None:
        state = "skipped" if r.skipped else r.status
        counts[state] = counts.get(state, 0) + 1
        tqdm.write(f"{r.model:12s} {r.stage:14s} {state:11s} {r.seconds:8.1f}s"
                   + (" (up to date)" if r.skipped else "") + (f"\n    {r.error}" if r.error else ""))
        bar.update(1)

    try:
        results = run_chains(models, stages, profile=args.profile, backend=args.backend, overrides=overrides,
                             force=args.force, wait=args.wait, jobs=args.jobs, scheduler=args.scheduler,
                             kernel=args.kernel, timeout=args.timeout, on_start=started, on_done=done)
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: the running stage is recorded as interrupted", file=sys.stderr)
        return 130
    except (LockHeld, ValueError) as err:
        bar.close()
        print(f"zoobook: {err}", file=sys.stderr)
        return 2
    bar.close()
    print("stages: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 1 if any(r.status in ("failed", "blocked") for rs in results.values() for r in rs) else 0


def _run(args: argparse.Namespace) -> int:
    stages = [s for s in args.stages.split(",") if s] if args.stages else None
    return _execute(args, [args.model], stages, _parse_overrides(args.param))


def _book(args: argparse.Namespace) -> int:
    from zoobook.book import build_book

    status = 0 if args.no_run else _execute(args, list(MODELS), None, {})
    if status == 130:
        return status
    index = build_book(args.profile, compare=args.compare)
    print(f"book: {index}" + (" (stages failed or were blocked: see the summary page)" if status else ""))
    return status


def _compare(args: argparse.Namespace) -> int:
    from zoobook.atomic import write_text_atomic
    from zoobook.report import RunFolder, compare_markdown

    try:
        before, after = RunFolder.open(args.run_a), RunFolder.open(args.run_b)
    except FileNotFoundError as err:
        print(f"zoobook compare: {err}", file=sys.stderr)
        return 2
    page, flagged = compare_markdown(before, after)
    write_text_atomic(args.out, page)
    print(f"{args.out}: {flagged} difference(s) flagged")
    return 0


def _locate(args: argparse.Namespace) -> int:
    import csv

    from zoobook import locate as locator
    from zoobook.models import open_run
    from zoobook.stages import steps

    run = open_run(args.model, args.profile)
    options = {k: v for k, v in (("precision_mode", args.precision_mode), ("keep_dtype", args.keep_dtype)) if v}
    try:
        result = steps.locate(run, args.candidate, graph=args.graph, batch_size=args.batch_size,
                              backend_options=options, dump=args.dump, suggest=args.suggest)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"zoobook locate: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else run.path("locate")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{result['candidate']}_{result['graph']}_bs{result['batch_size']}"
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["index", "node", "op_type", "tensor", "shape", "cosine", "max_abs", "max_rel",
                                    "rel_euclidean", "nonfinite", "finite", "passed"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["rows"])
    locator.plot_cosine(result["rows"], f"{run.spec.title}, {result['graph']}: {result['candidate']} against "
                                        "fp32 ONNX Runtime").savefig(out / f"{stem}.png", dpi=110)
    first = result["first"]
    print(f"{len(result['rows'])} operator outputs compared; "
          + (f"first divergence at #{first['index']} {first['node']} ({first['op_type']}), cosine "
             f"{first['cosine']:.6f}, max_rel {first['max_rel']:.3g}" if first else "none diverges"))
    for r in result["rounds"][1:]:
        print(f"  keeping {', '.join(r['keep_dtype'])} in fp32: {r['failing']} failing")
    if result["suggested_keep_dtype"]:
        print(f"suggested: atc --keep_dtype with the operators of type {', '.join(result['suggested_keep_dtype'])}")
    print(f"table and plot: {out / stem}.csv, .png")
    return 0


def _status(args: argparse.Namespace) -> int:
    from zoobook.runner import stage_states

    for model in [args.model] if args.model else MODELS:
        for s in stage_states(model, args.profile, args.backend):
            print(f"{model:12s} {s.stage:14s} {s.state:11s} {s.reason}".rstrip())
    return 0


def _list(args: argparse.Namespace) -> int:
    from zoobook.models import get_spec

    for name in MODELS:
        spec = get_spec(name)
        print(f"{name:12s} {spec.title}\n{'':12s} stages: {', '.join(spec.stages)}")
    return 0


def _stages(args: argparse.Namespace) -> int:
    from zoobook.backends import capabilities
    from zoobook.models import get_spec
    from zoobook.runner import declaration

    spec, backend = get_spec(args.model), capabilities(args.backend).name
    print(f"{spec.title}, backend {backend}: reads and writes under runs/<profile>/{spec.name}/artifacts/, "
          "inputs under the project")
    undeclared = 0
    for stage in spec.stages:
        print(f"\n{stage}")
        try:
            io = declaration(spec.name, stage, backend)
        except (KeyError, ValueError) as err:
            print(f"  not declared: {err}")
            undeclared += 1
            continue
        for field in ("upstream", "parameters", "reads", "writes", "inputs"):
            print(f"  {field:11s}{', '.join(getattr(io, field)) or '-'}")
    return 1 if undeclared else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zoobook", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run stages of one model")
    run.add_argument("model", choices=MODELS)
    run.add_argument("--stages", help="comma-separated: 02-export, export or 02 (default: all)")
    book = sub.add_parser("book", help="run all models' stages and build the Jupyter Book")
    book.add_argument("--no-run", action="store_true", help="only build the book from existing records")
    book.add_argument("--compare", metavar="RUN", help="add a page comparing RUN (a profile, or a run folder kept "
                                                       "aside) with this run")
    compare = sub.add_parser("compare", help="a page setting two runs side by side, differences flagged")
    compare.add_argument("run_a", metavar="RUN_A", help="before: a profile, or a folder of <model>/<stage>.json")
    compare.add_argument("run_b", metavar="RUN_B", help="after: the same")
    compare.add_argument("--out", default="compare.md", help="the page to write (Markdown; default compare.md)")
    status = sub.add_parser("status", help="each stage: ok, stale (and why), running, interrupted, failed, "
                                           "blocked or not run")
    status.add_argument("model", nargs="?", choices=MODELS)
    for p in (run, book, status):
        p.add_argument("--profile", default="default", choices=PROFILES)
        p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS))
    for p in (run, book):
        p.add_argument("--force", action="store_true", help="rerun stages that are up to date")
        p.add_argument("--wait", action="store_true", help="wait for another run of the same model to end")
        p.add_argument("--jobs", type=int, default=1, help="models run at once on this machine (Dask LocalCluster)")
        p.add_argument("--scheduler", metavar="ADDRESS", help="run on a Dask cluster (tcp://host:8786)")
        p.add_argument("--kernel", help="Jupyter kernel (default: the project's 'zoobook' kernel)")
        p.add_argument("--timeout", type=int, default=3600, help="per-cell timeout in seconds")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a notebook parameter (YAML value), repeatable")
    locate = sub.add_parser("locate", help="per-operator divergence of a candidate from fp32 ONNX Runtime")
    locate.add_argument("model", choices=MODELS)
    locate.add_argument("--profile", default="default", choices=PROFILES)
    locate.add_argument("--candidate", default="onnxruntime-fp16", choices=BACKENDS)
    locate.add_argument("--graph", help="which exported graph (required where the model exports several, as "
                                         "SiamMask does)")
    locate.add_argument("--batch-size", type=int, default=1)
    locate.add_argument("--precision-mode", help="the fp16 emulation's mode (force_fp16, allow_mix_precision, ...)")
    locate.add_argument("--keep-dtype", help="operator types or node names kept in fp32, comma-separated")
    locate.add_argument("--dump", metavar="FOLDER", help="an Ascend operator dump of the compiled model")
    locate.add_argument("--suggest", type=int, default=3, help="rounds of keeping the first divergent operator "
                                                                "type in fp32 (0: none)")
    locate.add_argument("--out", metavar="FOLDER", help="where the table and plot go (default: the run's "
                                                         "artifacts/locate/)")
    sub.add_parser("list", help="list models and their stages")
    stages = sub.add_parser("stages", help="what each stage of one model depends on, takes, reads and writes")
    stages.add_argument("model", choices=MODELS)
    stages.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                        help="the backend that {backend} in the paths stands for")
    args = parser.parse_args(argv)
    return {"run": _run, "book": _book, "list": _list, "stages": _stages, "status": _status,
            "compare": _compare, "locate": _locate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
