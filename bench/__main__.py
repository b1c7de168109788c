"""`python -m bench [--quick] [--only turns,burst,...]`: run the measures, print and save the table.

The benchmark process itself runs on the load core, beside wrk and the fake LLM; every server it
starts is pinned to the server core. Results go to `bench/results/latest.json`,
`bench/results/latest.md` (the table docs/performance.md quotes) and `bench/results/latest.png`;
the exit status is 1 only when a measure could not be carried out (a missed target is a result,
not an error).
"""

import argparse
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from bench import chart
from bench.load import ensure_wrk
from bench.measures import MEASURES
from bench.processes import LOAD_CORE, Processes
from bench.report import Row, machine, markdown, save, table
from bench.rig import Plan, Rig

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    keys = args.only.split(",") if args.only else list(MEASURES)
    unknown = sorted(set(keys) - set(MEASURES))
    if unknown:
        raise SystemExit(f"bench: unknown measure(s) {', '.join(unknown)}; choose from {', '.join(MEASURES)}")
    plan = Plan.quick() if args.quick else Plan()
    os.sched_setaffinity(0, {LOAD_CORE})
    started = time.monotonic()
    info = machine()
    wrk = ensure_wrk()
    rows, failed = _run(keys, plan, wrk)
    elapsed = time.monotonic() - started
    info["wrk"] = wrk
    print("\n" + table(rows))
    print(f"\n{info['cpu']}, {info['cores']} cores, Python {info['python']}; {elapsed:.0f} s")
    save(args.output / "latest.json", rows, info=info, settings=asdict(plan), seconds=elapsed)
    (args.output / "latest.md").write_text(markdown(rows, info))
    title = f"chatkeep vs its ceilings: {info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['date']}"
    chart.draw(args.output / "latest.png", rows, title=title)
    print(f"wrote {args.output / 'latest.json'}, latest.md and latest.png")
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="chatkeep against its ceilings.")
    parser.add_argument("--quick", action="store_true", help="one short run per measure, to try the benchmark")
    parser.add_argument("--only", metavar="KEYS", help=f"comma-separated subset of: {', '.join(MEASURES)}")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where latest.json, latest.md and latest.png go")
    return parser


def _run(keys: list[str], plan: Plan, wrk: str) -> tuple[list[Row], bool]:
    rows: list[Row] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="chatkeep-bench-") as workdir, Processes(Path(workdir)) as processes:
        rig = Rig(processes, wrk, plan)
        for key in keys:
            print(f"bench: {key}: {MEASURES[key].__doc__}", flush=True)
            begun = time.monotonic()
            try:
                rows.extend(MEASURES[key](rig))
            except Exception:
                traceback.print_exc()
                failed = True
                rows.append(Row(key, key, "", None, None, note="error (see the log above)"))
            print(f"bench: {key} took {time.monotonic() - begun:.0f} s", flush=True)
    return rows, failed


if __name__ == "__main__":
    sys.exit(main())
