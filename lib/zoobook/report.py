"""The book's two reading aids over stage records: the at-a-glance matrix of one run
(:func:`matrix_markdown`) and the comparison of two runs (:func:`compare_markdown`).

Both read only records (``<run folder>/<model>/<stage>.json``), never notebooks. A *run
folder* is one profile's folder of a ``runs/`` tree: ``runs/default``, or a copy of it kept
aside (``zoobook compare runs-yesterday/default default``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from zoobook.backends import BACKENDS, FP16_EMULATION, REFERENCE
from zoobook.compare import agreement_verdict
from zoobook.models import MODELS, get_spec
from zoobook.paths import PROFILES, runs_dir
from zoobook.stages.spec import ModelSpec
from zoobook.tables import markdown_table

#: the matrix's stage columns: a stage's name without its number
STAGE_COLUMNS = ("train", "data", "export", "convert", "infer", "evaluate", "benchmark")


# ---------------------------------------------------------------------------------------
# Reading runs


@dataclass(frozen=True)
class RunFolder:
    """One profile's records: ``records[model][stage]``, with the label pages show."""

    path: Path
    label: str
    records: dict[str, dict[str, dict]]

    @classmethod
    def open(cls, where: str | Path, label: str | None = None) -> RunFolder:
        """``where``: a profile name (``runs/<profile>``) or a folder holding ``<model>/<stage>.json``
        (a ``runs/`` tree copied aside holding one profile is taken as that profile's folder)."""
        path = Path(where)
        if not path.is_dir() and str(where) in PROFILES:
            path = runs_dir() / str(where)
        if not path.is_dir():
            raise FileNotFoundError(f"{where}: no such run folder (give a profile: {', '.join(PROFILES)}, "
                                    "or a folder holding <model>/<stage>.json records)")
        if not any(path.glob("*/*.json")):
            inner = [p for p in path.iterdir() if p.is_dir() and any(p.glob("*/*.json"))]
            if len(inner) != 1:
                raise FileNotFoundError(f"{path}: no <model>/<stage>.json records here"
                                        + (f"; it holds several profiles, name one: {', '.join(p.name for p in inner)}"
                                           if inner else ""))
            path = inner[0]
        records: dict[str, dict[str, dict]] = {}
        for file in sorted(path.glob("*/*.json")):
            if file.name.startswith(".") or file.parent.name not in MODELS:
                continue
            try:
                record = json.loads(file.read_text())
            except json.JSONDecodeError as err:
                record = {"status": "failed", "error": f"{file}: unreadable record ({err})"}
            records.setdefault(file.parent.name, {})[file.stem] = record
        return cls(path, label or str(where), records)


def _short(stage: str) -> str:
    return stage.split("-", 1)[-1]


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}g}"
    return str(value)


# ---------------------------------------------------------------------------------------
# At a glance


def _candidates(spec: ModelSpec, records: dict[str, dict]) -> list[str]:
    """The reference and every backend scored or run: registered backend names only."""
    found = [REFERENCE]
    accuracy = ((records.get("05-evaluate") or {}).get("tables") or {}).get("accuracy") or []
    for row in accuracy:
        name = row.get("candidate") or row.get("backend")
        if row.get("source") == "measured" and name in BACKENDS and name not in found:
            found.append(name)
    for record in records.values():
        if record.get("backend") in BACKENDS and record["backend"] not in found:
            found.append(record["backend"])
    convert = (records.get("03-convert") or {}).get("tables") or {}
    if convert.get("parity_fp16") and FP16_EMULATION not in found:
        found.append(FP16_EMULATION)
    return found


def _verdict_word(passed) -> str:
    return "—" if passed is None else ("pass" if passed else "**FAIL**")


def _task_cell(spec: ModelSpec, accuracy: list[dict], candidate: str) -> str:
    measured = next((r for r in accuracy if r.get("source") == "measured"
                     and (r.get("candidate") or r.get("backend")) == candidate), None)
    if not measured:
        return "—"
    parts = []
    for metric in spec.task_metrics:
        if metric not in measured:
            continue
        published = next((r[metric] for r in accuracy if r.get("source") == "published"
                          and isinstance(r.get(metric), (int, float))), None)
        parts.append(f"{metric} {_fmt(measured[metric], 3)}"
                     + (f" (pub. {_fmt(published, 4)})" if published is not None else ""))
    return "; ".join(parts) or "—"


def _agreement_cell(rows: list[dict] | None) -> str:
    judged = [r for r in rows or () if "passed" in r]
    if not judged:
        return "not judged"
    failed = [r["measure"] for r in judged if not r["passed"]]
    return (f"pass ({len(judged)}/{len(judged)})" if not failed
            else f"**FAIL** ({len(judged) - len(failed)}/{len(judged)}: {failed[0]})")


def _speed_cell(record: dict, candidate: str) -> str:
    """Items per second of the sequential end-to-end loop on this machine (06-benchmark's
    ``pipeline`` table, else the ``host`` breakdown's with the most threads, which is that
    loop too), and the bound the published device would allow with this host."""
    tables = record.get("tables") or {}
    loop = next((r for r in tables.get("pipeline") or () if r.get("backend") == candidate
                 and r.get("loop") == "sequential"), None)
    if loop:
        text = f"{_fmt(loop.get('throughput'), 3)}/s"
    else:
        breakdown = max(tables.get("host") or (), key=lambda r: r.get("threads") or 0, default=None)
        if not breakdown or not breakdown.get("total_ms") or record.get("backend") != candidate:
            return "—"
        text = f"{_fmt(1000.0 / breakdown['total_ms'], 3)}/s"
    bound = next((r for r in tables.get("deployment") or () if r.get("threads") == 1), None)
    if bound:
        text += f"; bound {_fmt(bound.get('overlapped_fps'), 3)}/s ({bound.get('bottleneck')})"
    return text


def _provenance_cell(records: dict[str, dict]) -> str:
    for stage in ("05-evaluate", "04-infer", "02-export", "01-data"):
        prov = (records.get(stage) or {}).get("provenance") or {}
        if prov:
            weights = (prov.get("weights") or {}).get("kind", "—")
            data = (prov.get("data") or {}).get("kind", "—")
            return f"{weights} / {data}"
    return "—"


def matrix_rows(run: RunFolder, states: dict[str, list] | None = None) -> list[dict]:
    """One row per model and candidate. ``states``: each model's stage states
    (:func:`zoobook.runner.stage_states`, which sees stale and running stages); without them,
    each record's own status."""
    rows = []
    for model in MODELS:
        spec, records = get_spec(model), run.records.get(model, {})
        by_stage = {s.stage: s.state for s in (states or {}).get(model, ())}
        stage_cells = {}
        for column in STAGE_COLUMNS:
            stage = next((s for s in spec.stages if _short(s) == column), None)
            if stage is None:
                stage_cells[column] = "—"
                continue
            state = by_stage.get(stage) or (records.get(stage) or {}).get("status") or "not run"
            word = state if state == "ok" else f"**{state}**"
            stage_cells[column] = f"[{word}]({model}/{stage}.ipynb)"
        export, convert = records.get("02-export") or {}, records.get("03-convert") or {}
        evaluate, bench = records.get("05-evaluate") or {}, records.get("06-benchmark") or {}
        accuracy = (evaluate.get("tables") or {}).get("accuracy") or []
        for candidate in _candidates(spec, records):
            reference = candidate == REFERENCE
            row = {"model": spec.title, "candidate": candidate + (" (ref.)" if reference else ""), **stage_cells}
            if reference:
                row.update({"export parity": "reference", "convert parity": "reference", "agreement": "reference"})
            else:
                row["export parity"] = _verdict_word((export.get("metrics") or {}).get("parity_passed"))
                metrics = convert.get("metrics") or {}
                row["convert parity"] = (_verdict_word(metrics.get("parity_passed")) if convert.get("backend") == candidate
                                         else _verdict_word(metrics.get("fp16_parity_passed"))
                                         if candidate == FP16_EMULATION else "—")
                tables = evaluate.get("tables") or {}
                row["agreement"] = (_agreement_cell(tables.get("agreement")) if evaluate.get("backend") == candidate
                                    else _agreement_cell(tables.get("agreement_fp16"))
                                    if candidate == FP16_EMULATION and tables.get("agreement_fp16") else "—")
            row["task metric"] = _task_cell(spec, accuracy, candidate)
            row["end to end"] = _speed_cell(bench, candidate)
            row["weights / data"] = _provenance_cell(records)
            rows.append(row)
    return rows


def matrix_markdown(profile: str) -> str:
    """The at-a-glance page of ``profile``'s run."""
    from zoobook.runner import stage_states

    run = RunFolder.open(runs_dir() / profile, profile) if (runs_dir() / profile).is_dir() else \
        RunFolder(runs_dir() / profile, profile, {})
    states = {model: stage_states(model, profile) for model in MODELS}
    lines = [f"# At a glance: the `{profile}` run", "",
             "One row per model and candidate: the PyTorch reference (*ref.*) and every backend this run scored. Each stage "
             "cell is its state, linked to its page (**ok**, **failed**, **blocked**, **stale**, **not run**, "
             "**running**, **interrupted**: anything but ok is in bold). *export parity*: ONNX Runtime on the exported "
             "graph against PyTorch; *convert parity*: the compiled model against the ONNX graph, for the backend "
             "that compiled it. *agreement*: 05-evaluate's task-level agreement with the reference, each measure "
             "against the limit the model's spec sets (the count of measures that hold). *task metric*: measured "
             "on this run's weights and data (see the last column: recipe or seeded weights and generated data "
             "score near zero), beside the guide's figure for the official weights (*pub.*). *end to end*: items "
             "per second of the sequential read → preprocess → graph → host loop on the machine that built the "
             "book; *bound*: the rate this host would allow beside the published device time, and which of the two "
             "limits it.", ""]
    rows = matrix_rows(run, states)
    # full-width: the theme's class that lets a block reach into the right margin (136 % of the
    # column); zoobook-matrix: a smaller type (book/_static/zoobook.css), so that the 15 columns fit
    lines += [":::{div} zoobook-matrix", markdown_table(rows), ":::", ""] if run.records else \
        [f"No stage has run in the `{profile}` profile.", ""]
    machines = sorted({(r.get("machine") or {}).get("host_cpu") or "" for recs in run.records.values()
                       for r in recs.values()} - {""})
    if machines:
        lines += [f"Measured on: {'; '.join(machines)}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# What changed


#: relative and absolute tolerance of a recorded figure (metrics, parity errors, agreement):
#: the stages are deterministic on one machine up to thread scheduling in reductions
RTOL, ATOL = 1e-3, 1e-9
#: columns that name a row of a table rather than measure it
KEY_COLUMNS = ("epoch", "graph", "output", "candidate", "backend", "batch_size", "measure", "source", "loop", "threads",
               "metric", "stage", "step", "variant", "conventions")
#: tables of times, rates and memory: shown as relative changes, not held to a tolerance; only a
#: graph's latency (``speed``, ``mean_ms``) is judged, against the spread the runs measured
TIMED_KINDS = ("speed", "host", "pipeline", "bound", "derived", "memory")
#: the timed columns shown (others, such as percentiles, stay on the stage pages)
TIMED_COLUMNS = ("mean_ms", "host_ms", "throughput", "overlapped_fps", "speedup", "overhead_pct", "peak_rss_mb")
#: columns of any other table that hold times or rates: shown as relative changes, never judged
TIMED_SUFFIXES = ("_ms", "_s", "_per_s", "seconds", "fps", "throughput")


def _row_key(row: dict) -> tuple:
    """The naming columns a row has, those holding names or counts (a float under a naming
    column's name, such as a host table's ``graph`` milliseconds, measures rather than names)."""
    return tuple((c, json.dumps(row[c], default=str)) for c in KEY_COLUMNS
                 if c in row and not isinstance(row[c], float))


def _timed(column: str) -> bool:
    """A column of times or rates in any table (a training's samples per second, say)."""
    return column.endswith(TIMED_SUFFIXES)


def _keyed(rows: list[dict], repeated: set) -> list[tuple[tuple, dict]]:
    """Each row with its key; rows whose naming columns repeat in either run's table are told
    apart by their order among those rows."""
    seen: dict[tuple, int] = {}
    out = []
    for row in (r for r in rows if isinstance(r, dict)):
        key = _row_key(row)
        if key in repeated:
            seen[key] = seen.get(key, 0) + 1
            key = key + (("#", json.dumps(seen[key])),)
        out.append((key, row))
    return out


def _repeated(*tables: list[dict]) -> set:
    repeated = set()
    for rows in tables:
        keys = [_row_key(r) for r in rows if isinstance(r, dict)]
        repeated |= {k for k in keys if keys.count(k) > 1}
    return repeated


def _key_text(key: tuple) -> str:
    return ", ".join(f"{c}={json.loads(v)}" for c, v in key) or "—"


def _numbers(row: dict) -> dict[str, float]:
    named = {c for c, _ in _row_key(row)}
    return {c: float(v) for c, v in row.items() if c not in named and isinstance(v, (int, float))
            and not isinstance(v, bool)}


def _speed_flag(a: dict, b: dict) -> str:
    """A latency change is flagged when it exceeds twice the larger per-call spread (``std_ms``)
    the two runs measured; rows with fewer than 3 calls, or no spread, are not judged."""
    va, vb = a["mean_ms"], b["mean_ms"]
    spread = [r.get("std_ms") for r in (a, b)]
    calls = [r.get("calls") or 0 for r in (a, b)]
    if not all(isinstance(s, (int, float)) for s in spread) or min(calls) < 3:
        return ""
    noise = 2 * max(spread)
    if abs(vb - va) > noise:
        return "**slower**" if vb > va else "**faster**"
    return ""


def compare_table(kind: str, rows_a: list[dict], rows_b: list[dict]) -> tuple[list[dict], int]:
    """Rows of two runs' table matched by their key columns, every measured column side by side
    with its difference and a flag; returns the rows and how many were flagged."""
    repeated = _repeated(rows_a, rows_b)
    keyed_a, keyed_b = _keyed(rows_a, repeated), _keyed(rows_b, repeated)
    index_b = dict(keyed_b)
    seen, out, flagged = set(), [], 0
    for key, a in keyed_a:
        seen.add(key)
        b = index_b.get(key)
        if b is None:
            out.append({"row": _key_text(key), "column": "—", "A": "present", "B": "absent", "difference": "",
                        "flag": "**only in A**"})
            flagged += 1
            continue
        if "passed" in a or "passed" in b:
            if a.get("passed") != b.get("passed"):
                out.append({"row": _key_text(key), "column": "passed", "A": _fmt(a.get("passed")),
                            "B": _fmt(b.get("passed")), "difference": "", "flag": "**verdict changed**"})
                flagged += 1
        na, nb = _numbers(a), _numbers(b)
        for column in sorted(set(na) | set(nb), key=lambda c: list(a).index(c) if c in a else 99):
            va, vb = na.get(column), nb.get(column)
            if va is None or vb is None:
                continue
            diff = vb - va
            if kind in TIMED_KINDS or _timed(column):
                if kind in TIMED_KINDS and column not in TIMED_COLUMNS:
                    continue
                flag = _speed_flag(a, b) if kind == "speed" and column == "mean_ms" else ""
                shown = f"{100 * diff / va:+.1f} %" if va else _fmt(diff)
            else:
                both_nan = math.isnan(va) and math.isnan(vb)
                beyond = not both_nan and (math.isnan(diff) or abs(diff) > ATOL + RTOL * max(abs(va), abs(vb)))
                flag = "**changed**" if beyond else ""
                shown = _fmt(diff)
            flagged += bool(flag)
            out.append({"row": _key_text(key), "column": column, "A": _fmt(va), "B": _fmt(vb), "difference": shown,
                        "flag": flag})
    for key, b in index_b.items():
        if key not in seen:
            out.append({"row": _key_text(key), "column": "—", "A": "absent", "B": "present", "difference": "",
                        "flag": "**only in B**"})
            flagged += 1
    return out, flagged


#: names listed per changed part of a fingerprint
NAMES_SHOWN = 4


def fingerprint_changes(a: dict | None, b: dict | None) -> list[str]:
    """What differs between two stage fingerprints: the notebook, the library, parameters,
    packages, upstream stages, inputs and files read, each named."""
    a, b = a or {}, b or {}
    changes = []
    for part in sorted((set(a) | set(b)) - {"key"}):     # the key is the digest of the others
        va, vb = a.get(part), b.get(part)
        if va == vb:
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            names = sorted(k for k in set(va) | set(vb) if va.get(k) != vb.get(k))
            if part == "parameters":
                names = [f"{k}: {va.get(k, '—')} → {vb.get(k, '—')}" for k in names]
            shown = ", ".join(map(str, names[:NAMES_SHOWN]))
            more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
            changes.append(f"{part} ({shown}{more})")
        else:
            changes.append(part)
    return changes


def compare_markdown(a: RunFolder, b: RunFolder) -> tuple[str, int]:
    """The comparison page of run ``a`` (before) against ``b`` (after); returns it and the
    number of flagged differences."""
    lines = [f"# What changed: `{a.label}` → `{b.label}`", "",
             f"Run A is `{a.label}`, run B is `{b.label}`; both read from their stage records only. Every table the "
             "book shows is matched row by row (by its naming columns: graph, output, candidate, batch size, "
             "measure...). A recorded figure is flagged **changed** where A and B differ by more than "
             f"{ATOL:g} + {RTOL:g} × the larger of the two; a parity or agreement verdict that differs is flagged "
             "**verdict changed**. A graph's latency is flagged **slower** or **faster** only where the change "
             "exceeds twice the larger standard deviation of the per-call times that the two runs measured (rows "
             "of fewer than 3 calls are shown, not judged); other speed rows are shown as relative changes. "
             "*Fingerprint* names what each stage's inputs changed: its notebook, the library, parameters, "
             "packages, upstream stages, data and weights, files read.", ""]
    total = 0
    summary = []
    body = []
    for model in MODELS:
        spec = get_spec(model)
        recs_a, recs_b = a.records.get(model, {}), b.records.get(model, {})
        if not recs_a and not recs_b:
            continue
        body += [f"## {spec.title}", ""]
        stage_rows = []
        for stage in spec.stages:
            ra, rb = recs_a.get(stage), recs_b.get(stage)
            status = [(r or {}).get("status", "not run") for r in (ra, rb)]
            changes = fingerprint_changes((ra or {}).get("fingerprint"), (rb or {}).get("fingerprint"))
            flag = "**status changed**" if status[0] != status[1] else ""
            total += bool(flag)
            stage_rows.append({"stage": stage, "A": status[0], "B": status[1],
                               "fingerprint": "; ".join(changes) if changes else "same",
                               "A git": (ra or {}).get("git_commit") or "",
                               "B git": (rb or {}).get("git_commit") or "", "flag": flag})
        body += [markdown_table(stage_rows), ""]
        for section in spec.sections:
            rows_a = (((recs_a.get(section.stage) or {}).get("tables")) or {}).get(section.table) or []
            rows_b = (((recs_b.get(section.stage) or {}).get("tables")) or {}).get(section.table) or []
            if not rows_a and not rows_b:
                continue
            rows, flagged = compare_table(section.kind, rows_a, rows_b)
            total += flagged
            if flagged:
                summary.append(f"- {spec.title}, {section.stage} *{section.title}*: {flagged} flagged")
            body += [f"### {section.title} ({section.stage})", "",
                     markdown_table(rows) if rows else "No figures to compare.", ""]
        verdicts = [agreement_verdict(((r.get("05-evaluate") or {}).get("tables") or {}).get("agreement"))
                    for r in (recs_a, recs_b)]
        if verdicts[0] != verdicts[1]:
            summary.append(f"- {spec.title}: agreement verdict {_verdict_word(verdicts[0])} → "
                           f"{_verdict_word(verdicts[1])}")
    lines += ["## Flagged", ""] + (summary or ["Nothing beyond its tolerance or noise."]) + [""] + body
    return "\n".join(lines), total


def no_comparison_markdown() -> str:
    return ("# What changed\n\nThis build compares with no other run. To put one here, keep a run aside "
            "(`cp -r runs/default runs-before`) and build with `zoobook book --no-run --compare runs-before`, or "
            "write a page for any two runs with `zoobook compare RUN_A RUN_B`.\n")
