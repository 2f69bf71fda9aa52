"""``zoobook``: run stages, build the book, list models and what their stages declare.

    zoobook list
    zoobook stages yolact_edge --backend ascend   # per stage: upstream, parameters, reads, writes, inputs
    zoobook run yolact_edge --stages export,convert --backend onnxruntime -p batch_sizes=[1,4]
    zoobook book --profile default            # run every model's stages, then build the book
    zoobook book --no-run                     # build the book from the records already there
"""

from __future__ import annotations

import argparse
import sys

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


def _run(args: argparse.Namespace) -> int:
    from zoobook.runner import run_model

    stages = [s for s in args.stages.split(",") if s] if args.stages else None
    results = run_model(args.model, stages, profile=args.profile, backend=args.backend,
                        overrides=_parse_overrides(args.param), kernel=args.kernel, timeout=args.timeout,
                        progress=True)
    for r in results:
        print(f"{r.model:12s} {r.stage:14s} {r.status:6s} {r.seconds:8.1f}s  {r.notebook}"
              + (f"\n    {r.error}" if r.error else ""))
    return 0 if all(r.status == "ok" for r in results) else 1


def _book(args: argparse.Namespace) -> int:
    from zoobook.book import build_book
    from zoobook.runner import run_model

    failed = 0
    if not args.no_run:
        for model in MODELS:
            for r in run_model(model, profile=args.profile, backend=args.backend, kernel=args.kernel, progress=True):
                print(f"{r.model:12s} {r.stage:14s} {r.status:6s} {r.seconds:8.1f}s" + (f"  {r.error}" if r.error else ""))
                failed += r.status != "ok"
    index = build_book(args.profile)
    print(f"book: {index}" + (f" ({failed} stage(s) failed: see the summary page)" if failed else ""))
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
    for p in (run, book):
        p.add_argument("--profile", default="default", choices=PROFILES)
        p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS))
        p.add_argument("--kernel", help="Jupyter kernel (default: the project's 'zoobook' kernel)")
        p.add_argument("--timeout", type=int, default=3600, help="per-cell timeout in seconds")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a notebook parameter (YAML value), repeatable")
    sub.add_parser("list", help="list models and their stages")
    stages = sub.add_parser("stages", help="what each stage of one model depends on, takes, reads and writes")
    stages.add_argument("model", choices=MODELS)
    stages.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                        help="the backend that {backend} in the paths stands for")
    args = parser.parse_args(argv)
    return {"run": _run, "book": _book, "list": _list, "stages": _stages}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
