"""Dashboard speed at the paper's dictionary size (issue 3 budgets).

Builds (or reuses) a synthetic run with 131,072 latents and 20 contexts each, then times
the pages with Streamlit's AppTest (the real page scripts, caches and Arrow
serialisation; no browser) and the core calls underneath:

- explorer first view, cold caches (opens the run)       budget 1.5 s
- explorer filter change (label, slider, text search)     budget 0.5 s
- latent page, a latent not seen before                   budget 0.5 s

    python bench/bench_dashboard.py [--run /tmp/mneme_bench_run] [--latents 131072]

Prints one line per measurement (median of --repeats) and its ratio to the budget.
Timings are noisy on a shared machine; the lead re-runs this on a quiet one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BUDGETS = {"explorer first view": 1.5, "explorer filter change": 0.5, "latent page": 0.5}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def report(name: str, seconds: list[float]) -> None:
    med = statistics.median(seconds)
    budget = BUDGETS.get(name)
    ratio = f"  {med / budget:5.2f}× budget ({budget} s)" if budget else ""
    print(f"{name:<38} median {med * 1000:8.1f} ms  min {min(seconds) * 1000:8.1f} ms  n={len(seconds)}{ratio}")


def app(run: Path, page: str, **params: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params["run"] = str(run)
    at.query_params.update(params)
    at.switch_page(f"pages/{page}.py")
    return at


def check(at) -> None:
    if at.exception:
        raise SystemExit(f"page raised: {at.exception[0].value}")


def clear_caches() -> None:
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="/tmp/mneme_bench_run")
    ap.add_argument("--latents", type=int, default=131_072)
    ap.add_argument("--contexts", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    run = Path(args.run)
    if not (run / "run.json").is_file():
        import synthetic_run

        t = timed(lambda: synthetic_run.build(run, args.latents, args.contexts))
        print(f"built synthetic run at {run} in {t:.1f} s")

    import numpy as np

    from mneme_core import open_run
    from mneme_core.views import explore

    r = open_run(run)
    n = len(r.latents)
    print(f"run {run}: {n:,} latents, contexts.parquet {(run / 'contexts.parquet').stat().st_size / 1e6:.0f} MB")
    rng = np.random.default_rng(0)

    # ---- core calls (no Streamlit)
    report("core: open run + read latents", [timed(lambda: open_run(run).latents) for _ in range(args.repeats)])
    ids = rng.integers(0, n, args.repeats)
    report("core: contexts of one latent", [timed(lambda i=i: r.contexts(int(i))) for i in ids])
    spec = explore.FilterSpec(
        labels={"attribution": ["suppressed"]}, ranges={"rel_norm": (0.0, 0.3)}, text="virus", sort_by="shift"
    )
    report("core: apply_filters", [timed(lambda: explore.apply_filters(r.latents, spec)) for _ in range(args.repeats)])

    # ---- pages through AppTest. One AppTest per page, warmed once: a new AppTest pays
    # ~2 s of harness start-up (component scan) that a running server never pays again.
    at = app(run, "explorer")
    at.run()
    check(at)
    first = []
    for _ in range(args.repeats):
        clear_caches()  # as if the server had never opened this run
        first.append(timed(at.run))
        check(at)
    report("explorer first view", first)
    report("explorer rerun, nothing changed", [timed(at.run) for _ in range(args.repeats)])

    changes = []
    for i in range(args.repeats):
        at.multiselect(key="f_attribution").set_value(["suppressed"] if i % 2 == 0 else ["amplified"])
        changes.append(timed(at.run))
        check(at)
        at.text_input(key="f_text").set_value("virus" if i % 2 == 0 else "")
        changes.append(timed(at.run))
        check(at)
        lo, hi = at.slider(key="f_shift").value
        at.slider(key="f_shift").set_value((lo, hi - (i + 1) * 0.1))
        changes.append(timed(at.run))
        check(at)
        at.selectbox(key="f_sort").set_value("rel_norm" if i % 2 == 0 else "shift")
        changes.append(timed(at.run))
        check(at)
    report("explorer filter change", changes)
    shown = next(m.value for m in at.markdown if m.value.startswith("Showing"))
    print(f"  (last filter: {shown})")

    at = app(run, "latent", latent="0")
    at.run()
    check(at)
    latent_times = []
    for i in rng.integers(0, n, args.repeats):
        at.query_params["latent"] = str(int(i))  # a latent not seen before: its contexts are not cached
        latent_times.append(timed(at.run))
        check(at)
        assert at.title[0].value == f"Latent {int(i)}", at.title[0].value
    report("latent page", latent_times)


if __name__ == "__main__":
    main()
