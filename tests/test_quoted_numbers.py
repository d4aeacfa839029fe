"""Every headline number the docs quote, recomputed from its committed results file.

Each ``Claim`` is ``(doc, results file, quote)``: ``quote`` maps the parsed results
file (a ``.json``: its object; a ``.csv``: its rows, dicts of strings) to the exact
string the doc prints, formatted as the doc formats it (``f"{ratio:.1f}×"``). The
test asserts that string occurs in the doc, runs of whitespace (line breaks
included) counting as one space. Re-running a bench or an experiment that changes
a results file therefore fails here until the prose quotes the new values.

To cover another results file, add one line to ``CLAIMS``, e.g. for
``results/fedpa-kuaisar-r/random/table.csv``::

    Claim("README.md", "results/fedpa-kuaisar-r/random/table.csv",
          lambda rows: f"AUC {mean_of(rows, 'test_auc', method='fedpa'):.4f}"),

A qualitative claim can be checked too: make ``quote`` return the doc's words only
while the numbers support them (see ``_more_than_double``). Pure file reads.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from statistics import mean, pstdev
from typing import Any, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Claim(NamedTuple):
    doc: str  # path from the repository root
    source: str  # results file, path from the repository root
    quote: Callable[[Any], str]  # parsed results -> the string the doc prints


@cache
def load(source: str) -> Any:
    path = ROOT / source
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    return json.loads(path.read_text())


@cache
def doc_text(doc: str) -> str:
    return " ".join((ROOT / doc).read_text().split())


# --- formatting, as the docs write numbers ---------------------------------------


def times(v: float) -> str:
    return f"{v:.1f}×"


def count(v: float) -> str:
    return f"{v:,.0f}"


def span(values: Iterable[float], fmt: str = ".2f") -> str:
    vs = list(values)
    return f"{min(vs):{fmt}}–{max(vs):{fmt}}"


def mb(nbytes: float, fmt: str = ".0f") -> str:
    return f"{nbytes / 1e6:{fmt}} MB"


def mean_of(rows: list[dict[str, str]], column: str, **where: str) -> float:
    """Mean of a CSV column over the rows matching ``where`` (for table.csv files)."""
    picked = [r for r in rows if all(r[k] == v for k, v in where.items())]
    return mean(float(r[column]) for r in picked)


# --- results/fellrec-objective/zero_shot.json ------------------------------------

ZERO_SHOT = "results/fellrec-objective/zero_shot.json"


def _zs(d: dict, text: str, tau: str = "0.05") -> dict:
    """The zero-shot objective's values for item text ``text`` at ``tau``."""
    return d[text][tau]


# --- bench/results/*.json ---------------------------------------------------------


def command(d: dict) -> str:
    """The JSON's command, without a scratch ``--out`` and the interpreter."""
    return d["command"].split(" --out")[0].removeprefix("python ")


def _k(d: dict, model: str, k: int) -> dict:
    return next(r for r in d[model]["by_k"] if r["k"] == k)


def _share(d: dict, model: str, k: int) -> str:
    r, whole = _k(d, model, k), d[model]["whole_model_params"]
    return f"{r['client_params'] / whole:.0%}"


def _metric(v: float) -> str:
    return "0.0" if v == 0 else f"{v:.6f}"


def _split_row(d: dict, side: str, label: str, wire: str) -> str:
    s = d[side]
    eval_s = f"{s['eval_s']:.0f} s" if s["eval_s"] >= 100 else f"{s['eval_s']:.1f} s"
    cells = [
        label,
        repr(s["train_loss"]),
        *(_metric(s[m]) for m in ("val_ndcg@10", "test_ndcg@10", "test_recall@10")),
        f"{s['train_s']:.1f} s",
        eval_s,
        wire,
    ]
    return "| " + " | ".join(cells) + " |"


def _split_rows(d: dict, eval_bytes_name: str) -> list[str]:
    f = d["flower"]
    train = mb(
        f["split_hidden_bytes"], ".1f" if f["split_hidden_bytes"] < 1e8 else ".0f"
    )
    wire = f"{train} training, {mb(f['split_eval_hidden_bytes'])} {eval_bytes_name}"
    return [
        _split_row(d, "flower", "Flower, split as messages", wire),
        _split_row(d, "embedded", "embedded, split in one process", "—"),
    ]


def _n_clients(d: dict) -> int:
    return int(
        next(s for s in d["set"] if s.startswith("data.n_clients=")).split("=")[1]
    )


def _flower_rows(d: dict, clients: int, placement: str) -> list[dict]:
    return [
        r for r in d["rows"] if (r["clients"], r["placement"]) == (clients, placement)
    ]


def _flower_summary(d: dict, clients: int, placement: str) -> dict:
    return next(
        s
        for s in d["summary"]
        if (s["clients"], s["placement"]) == (clients, placement)
    )


def _flower_row(d: dict, clients: int, placement: str) -> str:
    rows, s = (
        _flower_rows(d, clients, placement),
        _flower_summary(d, clients, placement),
    )
    per_client = ".2f" if clients < 1000 else ".3f"

    def ms(field: str, fmt: str = ".2f") -> str:
        return span((r[field] for r in rows), fmt) + " ms"

    def ratio(field: str, bold: bool = False) -> str:
        m = f"{s[field]['median']:.2f}"
        return (
            f"{f'**{m}**' if bold else m} ({s[field]['min']:.2f}–{s[field]['max']:.2f})"
        )

    cells = [
        f"{clients:,}",
        placement,
        ms("fedrec_overhead_ms_per_client", per_client),
        ms("echo_ms_per_client", per_client),
        ms("busy_echo_ms_per_client", per_client),
        ms("idle_echo_ms_per_client", per_client),
        ratio("overhead_ratio", bold=True),
        ratio("mean_overhead_ratio"),
        ratio("overhead_ratio_vs_busy_echo", bold=True),
        ratio("overhead_ratio_vs_idle_echo"),
        ms("fedrec_node_glue_ms_per_message"),
        ms("fedrec_compute_ms_per_client"),
        ms("embedded_ms_per_client"),
    ]
    return "| " + " | ".join(cells) + " |"


def _echo_ratios(d: dict) -> str:
    """Medians vs the echo: '1.40× (shared) and 1.31× (pinned) ..., 1.05× and 1.02×'."""

    def m(c: int, p: str) -> str:
        return f"{_flower_summary(d, c, p)['overhead_ratio']['median']:.2f}×"

    return (
        f"{m(100, 'shared')} (shared) and {m(100, 'pinned')} (pinned) the echo's at "
        f"100 clients, {m(1000, 'shared')} and {m(1000, 'pinned')} at 1,000"
    )


def _vs_slow_echoes(d: dict) -> str:
    fields = ("overhead_ratio_vs_busy_echo", "overhead_ratio_vs_idle_echo")
    return "the medians are " + span(
        s[f]["median"] for s in d["summary"] for f in fields
    )


def _wake(d: dict) -> str:
    w = d["wake_round_trip_us"]
    same, other = w["same_cpu"], w["other_cpu"]
    return (
        f"{same['after_0_ms']:.0f} µs on the same CPU and {other['after_0_ms']:.0f} µs "
        f"across CPUs back to back, {same['after_16_ms']:.0f} and "
        f"{other['after_16_ms']:.0f} µs after 16 ms asleep"
    )


HOPS = {
    "to_actor_ms": "to the actor",
    "in_app_ms": "in the app, beyond the compute",
    "back_ms": "back to Flower's worker",
}


def _hop_row(d: dict, clients: int, hop: str) -> str:
    rows = [r for r in d["rows"] if r["clients"] == clients]
    first = (
        f"{clients:,} ({clients // rows[0]['nodes']})" if hop == "to_actor_ms" else ""
    )
    cells = [span(r[app][hop] for r in rows) + " ms" for app in ("fedrec", "echo")]
    cells.append(span(r["idle_echo"][hop] for r in rows) + " ms")
    if hop == "in_app_ms":
        cells[0] = f"**{cells[0]}**"
    return f"| {first} | {HOPS[hop]} | " + " | ".join(cells) + " |"


def _hop_compute(d: dict) -> str:
    def c(clients: int) -> str:
        return span(
            (r["compute_ms"] for r in d["rows"] if r["clients"] == clients), ".1f"
        )

    return f"{c(100)} ms a message of 10 clients, {c(1000)} ms of 100"


def _glue_row(d: dict, clients: int) -> str:
    r = next(r for r in d["rows"] if r["clients"] == clients)
    cells = [f"{clients:,} ({r['clients_per_message']})"] + [
        f"{r[f]:.2f} ms"
        for f in ("trained_glue_ms", "warm_glue_ms", "evicted_glue_ms", "echo_call_ms")
    ]
    return "| " + " | ".join(cells) + " |"


def _more_than_double(d: dict) -> str:
    r = next(r for r in d["rows"] if r["clients_per_message"] == 10)
    ok = r["evicted_glue_ms"] > 2 * r["warm_glue_ms"]
    return (
        "Cold caches more than double the warm glue at 10 clients" if ok else "(false)"
    )


B = "bench/README.md"
PACING = "bench/results/pacing.json"
ENGINE, FEDPA = "bench/results/engine.json", "bench/results/fedpa.json"
SPLIT = "bench/results/split.json"
SFR = "bench/results/split_flower_real.json"
SFRD = "bench/results/split_flower_real_discriminative.json"
FLOWER, HOPS_JSON = "bench/results/flower.json", "bench/results/flower_hops.json"
GLUE = "bench/results/flower_glue.json"
SMOL, MINI = "smollm2-135m", "minilm-l6"

DEMO, DEMO_CI = "results/demo/table.csv", "results/demo/intervals.csv"
FEDPA_R = "results/fedpa-kuaisar-r/random/table.csv"
FEDPA_A = "results/fedpa-kuaisar-r/attribute/table.csv"
FEDPA_R_CI = "results/fedpa-kuaisar-r/random/intervals.csv"
FEDPA_A_CI = "results/fedpa-kuaisar-r/attribute/intervals.csv"
FEDPA_METHODS = (
    "pretrained",
    "fedavg-full",
    "fedavg-lora",
    "centralised",
    "fedper",
    "local",
    "fedpa",
    "user-prior",
    "logreg",
)


def auc3(method: str, std: bool = False) -> Callable[[Any], str]:
    """``0.705`` (``± 0.002`` with ``std``): a method's mean test AUC over seeds."""

    def quote(rows: list[dict[str, str]]) -> str:
        v = [float(r["test_auc"]) for r in rows if r["method"] == method]
        text = f"{mean(v):.3f}"
        return text + (f" ± {pstdev(v):.3f}" if std else "")

    return quote


GEN_TABLE = "results/fellrec-ml100k-generative-fewshot/table.csv"
GEN_CI = "results/fellrec-ml100k-generative-fewshot/intervals.csv"
GEN_CURVE = "results/fellrec-ml100k-generative-fewshot/val_ndcg@10_per_round.csv"
FELLREC_TABLE = "results/fellrec-ml100k/table.csv"
FELLREC_CI = "results/fellrec-ml100k/intervals.csv"
FELLREC_BALANCE = "results/fellrec-ml100k/balance.json"


def ndcg4(method: str, column: str = "test_ndcg@10") -> Callable[[Any], str]:
    """``0.0306``: a method's mean of a FELLRec table column over seeds."""

    def quote(rows: list[dict[str, str]]) -> str:
        return f"{mean(float(r[column]) for r in rows if r['method'] == method):.4f}"

    return quote


def delta(method: str, metric: str = "test_auc") -> Callable[[Any], str]:
    """``+0.0022 [+0.0006, +0.0039]``: a paired interval as table.md prints it."""

    def quote(rows: list[dict[str, str]]) -> str:
        (r,) = [x for x in rows if x["method"] == method and x["metric"] == metric]
        lo, hi = float(r["lo"]), float(r["hi"])
        return f"{float(r['diff']):+.4f} [{lo:+.4f}, {hi:+.4f}]"

    return quote


FEATURES_TABLE = "results/fellrec-ml100k-features/table.csv"
FEATURES_CI = "results/fellrec-ml100k-features/intervals.csv"
FEATURES_BALANCE = "results/fellrec-ml100k-features/balance.json"


def delta_vs(method: str, reference: str, metric: str) -> Callable[[Any], str]:
    """:func:`delta` against ``reference`` (intervals.csv holds several)."""
    return lambda rows: delta(method, metric)(
        [r for r in rows if r["reference"] == reference]
    )


CLAIMS: list[Claim] = [
    # README.md and docs/fellrec.md: the text-features table and its balance log
    *(
        Claim(doc, FEATURES_TABLE, ndcg4(m))
        for doc in ("README.md", "docs/fellrec.md")
        for m in ("zero-shot", "popularity", "fellrec", "fedavg", "item-knn")
    ),
    *(
        Claim(doc, FEATURES_TABLE, ndcg4(m))
        for doc in ("README.md", "docs/fellrec.md")
        for m in ("local", "centralised")
    ),
    Claim("docs/fellrec.md", FEATURES_TABLE, ndcg4("fellrec-update")),
    *(
        Claim(doc, FEATURES_CI, delta_vs(m, ref, "test_ndcg@10"))
        for doc in ("README.md", "docs/fellrec.md")
        for m, ref in (
            ("popularity", "fedavg"),
            ("popularity", "fellrec"),
            ("fellrec", "fedavg"),
        )
    ),
    *(
        Claim("docs/fellrec.md", FEATURES_CI, delta_vs(m, ref, "test_ndcg@10"))
        for m, ref in (
            ("zero-shot", "fedavg"),
            ("zero-shot", "fellrec"),
            ("item-knn", "fedavg"),
            ("item-knn", "fellrec"),
            ("fellrec-update", "fellrec"),
        )
    ),
    *(
        Claim("docs/fellrec.md", FEATURES_TABLE, ndcg4(m, "test_ndcg@10_client_std"))
        for m in ("fedavg", "fellrec")
    ),
    *(
        Claim(
            doc,
            FEATURES_TABLE,
            lambda rows: f"{sum(float(r['wall_s']) for r in rows) / 60:.0f} min",
        )
        for doc in ("README.md", "docs/fellrec.md")
    ),
    *(
        Claim(
            "docs/fellrec.md",
            FEATURES_TABLE,
            lambda rows, m=m, label=label: (
                f"{mean_of(rows, 'wall_s', method=m):.0f} s ({label})"
            ),
        )
        for m, label in (("fedavg", "FedAvg"), ("fellrec", "FELLRec"))
    ),
    Claim(
        "docs/fellrec.md",
        FEATURES_TABLE,
        lambda rows: (
            f"zero-shot row {mean_of(rows, 'wall_s', method='zero-shot'):.0f} s"
        ),
    ),
    Claim(
        "docs/fellrec.md",
        FEATURES_TABLE,
        lambda rows: "worst group is lower ({:.4f} against {:.4f})".format(
            mean_of(rows, "test_ndcg@10_client_worst", method="fellrec"),
            mean_of(rows, "test_ndcg@10_client_worst", method="fedavg"),
        ),
    ),
    *(
        Claim(doc, FEATURES_BALANCE, lambda d: span(d["range"]["s_offdiag"], ".3f"))
        for doc in ("README.md", "docs/fellrec.md")
    ),
    Claim(
        "docs/fellrec.md",
        FEATURES_BALANCE,
        lambda d: span(d["range"]["self_weight"], ".3f"),
    ),
    Claim(
        "docs/fellrec.md",
        FEATURES_BALANCE,
        lambda d: f"weights down to {d['range']['heat'][0]:.3f}",
    ),
    # docs/fellrec.md: the generative backbone's few-shot table
    *(
        Claim("docs/fellrec.md", GEN_TABLE, ndcg4(m))
        for m in ("zero-shot", "fedavg", "popularity")
    ),
    *(
        Claim("docs/fellrec.md", GEN_CI, delta(m, "test_ndcg@10"))
        for m in ("fedavg", "popularity")
    ),
    *(
        Claim(
            "docs/fellrec.md",
            GEN_TABLE,
            lambda rows, m=m, w=w: f"{w} {mean_of(rows, 'wall_s', method=m):.0f} s",
        )
        for m, w in (("fedavg", "took"), ("zero-shot", "row"))
    ),
    Claim(
        "docs/fellrec.md",
        GEN_TABLE,
        lambda rows: f"{sum(float(r['wall_s']) for r in rows) / 60:.0f} min (the runs'",
    ),
    *(
        Claim(
            "docs/fellrec.md",
            GEN_CURVE,
            lambda rows, m=m, r=r, label=label: "{} {:.4f}".format(
                label,
                next(
                    float(x["val_ndcg@10"])
                    for x in rows
                    if (x["method"], x["round"]) == (m, r)
                ),
            ),
        )
        for m, r, label in (
            ("fedavg", "-1", "scores val NDCG@10"),
            ("fedavg", "0", "model scores"),
        )
    ),
    # docs/fellrec.md: the MiniLM + LoRA table and its balance log
    *(Claim("docs/fellrec.md", FELLREC_TABLE, ndcg4(m)) for m in ("fedavg", "fellrec")),
    Claim("docs/fellrec.md", FELLREC_CI, delta("popularity", "test_ndcg@10")),
    *(
        Claim("docs/fellrec.md", FELLREC_CI, delta(m, "test_ndcg@10"))
        for m in ("item-knn", "fedavg", "pretrained")
    ),
    Claim(
        "docs/fellrec.md",
        FELLREC_TABLE,
        lambda rows: f"add up to {sum(float(r['wall_s']) for r in rows) / 60:.0f} min",
    ),
    *(
        Claim("docs/fellrec.md", FELLREC_TABLE, ndcg4(m, "test_ndcg@10_client_std"))
        for m in ("fedavg", "fellrec")
    ),
    Claim(
        "docs/fellrec.md",
        FELLREC_BALANCE,
        lambda d: span(d["range"]["s_offdiag"], ".3f"),
    ),
    Claim(
        "docs/fellrec.md",
        FELLREC_BALANCE,
        lambda d: span(d["range"]["self_weight"], ".3f"),
    ),
    Claim(
        "docs/fellrec.md",
        FELLREC_BALANCE,
        lambda d: f"weights down to {d['range']['heat'][0]:.3f}",
    ),
    # docs/fedpa.md: the LDP sweep
    *(
        Claim("docs/fedpa.md", "results/fedpa-kuaisar-r/ldp/intervals.csv", delta(v))
        for v in (
            "inf",
            "1",
            "10",
            "100",
            "1000",
            "1, ldp_clip tuned (0.1)",
            "10, ldp_clip tuned (3)",
            "100, ldp_clip tuned (10)",
            "1000, ldp_clip tuned (10)",
        )
    ),
    # README.md and docs/demo.md: the demo table
    *(
        Claim("docs/demo.md", DEMO, ndcg4(m, "test_auc"))
        for m in (
            "pretrained",
            "local",
            "fedavg",
            "fedavg-lora",
            "fedper",
            "centralised",
            "fedpa",
        )
    ),
    *(
        Claim("docs/demo.md", DEMO_CI, delta(m))
        for m in ("fedper", "fedavg", "fedavg-lora", "pretrained")
    ),
    Claim("README.md", DEMO, ndcg4("fedpa", "test_auc")),
    Claim("README.md", DEMO_CI, delta("fedper")),
    # README.md and docs/fedpa.md: the FedPA tables (4-decimal means of 5 seeds)
    *(
        Claim("README.md", FEDPA_A, ndcg4(m, "test_auc"))
        for m in FEDPA_METHODS
        if m != "centralised"
    ),
    *(Claim("README.md", FEDPA_A_CI, delta(m)) for m in ("local", "fedper")),
    Claim("README.md", FEDPA_A_CI, delta("pretrained", "test_auc_new")),
    *(
        Claim("docs/fedpa.md", table, ndcg4(m, column))
        for table, column in (
            (FEDPA_R, "test_auc"),
            (FEDPA_A, "test_auc"),
            (FEDPA_A, "test_auc_new"),
        )
        for m in FEDPA_METHODS
    ),
    *(
        Claim("docs/fedpa.md", FEDPA_A, ndcg4(m, column))
        for m in ("fedpa", "local", "fedper")
        for column in ("test_auc_light", "test_auc_heavy")
    ),
    Claim("docs/fedpa.md", FEDPA_A, ndcg4("fedpa-no-gate", "test_auc_light")),
    *(
        Claim("docs/fedpa.md", FEDPA_A_CI, delta(m))
        for m in (
            "local",
            "fedper",
            "logreg",
            "fedpa-no-gate",
            "fedpa-no-user",
            "fedpa-no-group",
            "fedpa-global",
        )
    ),
    *(
        Claim("docs/fedpa.md", FEDPA_A_CI, delta(m, "test_auc_new"))
        for m in ("fedavg-full", "pretrained", "fedper", "fedpa-global")
    ),
    Claim("docs/fedpa.md", FEDPA_R_CI, delta("local")),
    Claim("docs/fedpa.md", FEDPA_R_CI, delta("fedavg-full", "test_auc_new")),
    # README.md, the Benchmarks paragraph
    Claim(
        "README.md",
        FEDPA,
        lambda d: (
            f"FedPA {times(d['ratio'])} the loop ({count(d['stacked_clients_per_s'])}"
            f" vs {count(d['loop_clients_per_s'])} clients/s)"
        ),
    ),
    Claim(
        "README.md",
        FEDPA,
        lambda d: (
            f"a full {d['full_run_rounds']}-round FedPA run in {d['full_run_s']:.1f} s"
        ),
    ),
    Claim(
        "README.md", ENGINE, lambda d: f"FedAvg of the full model {times(d['ratio'])}"
    ),
    # docs/fellrec.md
    Claim(
        "docs/fellrec.md",
        SFR,
        lambda d: f"({mb(d['flower']['split_eval_hidden_bytes'])} for",
    ),
    Claim(
        "docs/fellrec.md",
        ZERO_SHOT,
        lambda d: (
            f"the history holds {_zs(d, 'title_year_genres')['history_mass']:.0%} of"
            ' the softmax mass with "title (year) genres" texts'
            f" ({_zs(d, 'title')['history_mass']:.0%} with titles alone)"
        ),
    ),
    Claim(
        "docs/fellrec.md",
        ZERO_SHOT,
        lambda d: (
            f"masked cross-entropy is {_zs(d, 'title_year_genres')['masked_ce']:.2f}"
            f" (unmasked {_zs(d, 'title_year_genres')['ce']:.2f}; titles alone"
            f" {_zs(d, 'title')['masked_ce']:.2f} / {_zs(d, 'title')['ce']:.2f})"
        ),
    ),
    Claim(
        "docs/fellrec.md",
        ZERO_SHOT,
        lambda d: (
            "(full texts) is "
            + ", ".join(
                f"{_zs(d, 'title_year_genres', t)['masked_ce']:.2f} at {at}"
                for t, at in (("0.05", "τ = 0.05"), ("0.1", "0.1"), ("0.2", "0.2"))
            )
            + f" and {_zs(d, 'title_year_genres', '0.5')['masked_ce']:.2f} at 0.5"
            + f" (a model that knows nothing: {d['uniform_masked_ce']:.2f})"
        ),
    ),
    # bench/README.md: pacing.json
    Claim(B, PACING, command),
    *(
        Claim(
            B,
            PACING,
            lambda d, i=i, label=label: (
                "| {} | {:.4f} s | {:.4f} s | {:+.1f}% |".format(
                    label,
                    d["summary"][i]["paced_train_s"],
                    d["summary"][i]["backoff_train_s"],
                    100 * d["summary"][i]["gain"],
                )
            ),
        )
        for i, label in ((0, "woken (default)"), (1, "stock"))
    ),
    Claim(
        B,
        PACING,
        lambda d: (
            "saves {:.0f}% of a round's time (per repeat {:+.0f}% to {:+.0f}%)".format(
                100 * d["summary"][1]["gain"],
                *sorted(
                    100 * (b / a - 1)
                    for a, b in zip(
                        d["summary"][1]["paced_runs"],
                        d["summary"][1]["backoff_runs"],
                        strict=True,
                    )
                )[:: len(d["summary"][1]["paced_runs"]) - 1],
            )
        ),
    ),
    Claim(
        B,
        PACING,
        lambda d: "spread, {:.2f}–{:.2f} s)".format(
            min(d["summary"][0]["paced_runs"] + d["summary"][0]["backoff_runs"]),
            max(d["summary"][0]["paced_runs"] + d["summary"][0]["backoff_runs"]),
        ),
    ),
    # bench/README.md: engine.json
    Claim(B, ENGINE, command),
    Claim(B, ENGINE, lambda d: f"trains {count(d['stacked_clients_per_s'])} clients/s"),
    Claim(
        B,
        ENGINE,
        lambda d: (
            f"the loop {count(d['loop_clients_per_s'])} (`loop_clients_per_s`): "
            f"{times(d['ratio'])} (`ratio`)"
        ),
    ),
    Claim(B, ENGINE, lambda d: f"≈ {1000 / d['loop_clients_per_s']:.1f} ms a client"),
    Claim(B, ENGINE, lambda d: f"{d['clients_per_round']:,} clients a round"),
    Claim(
        B,
        FEDPA_R,
        lambda rows: (
            f"all {count(mean_of(rows, 'model_params', method='fedavg-full'))}"
            " parameters"
        ),
    ),
    # fedpa.json
    Claim(B, FEDPA, command),
    Claim(
        B,
        FEDPA,
        lambda d: (
            f"trains {count(d['stacked_clients_per_s'])} clients/s, the loop "
            f"{count(d['loop_clients_per_s'])}: {times(d['ratio'])} (`ratio`)"
        ),
    ),
    Claim(
        B,
        FEDPA,
        lambda d: (
            f"full {d['full_run_rounds']}-round run takes {d['full_run_s']:.1f} s"
        ),
    ),
    Claim(
        B,
        FEDPA,
        lambda d: (
            f"best validation AUC {d['full_run_best_val_auc']:g}, test AUC "
            f"{d['full_run_test_auc_at_best']:g} at that round"
        ),
    ),
    Claim(B, FEDPA, lambda d: f"{d['clients_per_round']:,} private clients a round"),
    Claim(
        B,
        FEDPA,
        lambda d: f"(`pretrain_s_if_not_cached`: {d['pretrain_s_if_not_cached']})",
    ),
    # split.json
    Claim(B, SPLIT, command),
    Claim(
        B,
        SPLIT,
        lambda d: (
            f"keeps {_share(d, SMOL, 1)} of SmolLM2 "
            f"({_k(d, SMOL, 1)['client_params'] / 1e6:.1f} M of "
            f"{d[SMOL]['whole_model_params'] / 1e6:.1f} M"
        ),
    ),
    Claim(
        B,
        SPLIT,
        lambda d: (
            f"{_share(d, MINI, 1)} of MiniLM "
            f"({_k(d, MINI, 1)['client_params'] / 1e6:.1f} M of "
            f"{d[MINI]['whole_model_params'] / 1e6:.1f} M)"
        ),
    ),
    Claim(B, SPLIT, lambda d: f"to {_share(d, SMOL, 28)} at k = 28 for SmolLM2"),
    Claim(
        B,
        SPLIT,
        lambda d: (
            f"the client's {_k(d, SMOL, 1)['client_s_per_step']:.2f} s at k = 1 and "
            f"{_k(d, SMOL, 28)['client_s_per_step']:.2f} s at k = 28, the server's "
            f"{_k(d, SMOL, 1)['server_s_per_step']:.2f} s and "
            f"{_k(d, SMOL, 28)['server_s_per_step']:.2f} s"
        ),
    ),
    Claim(
        B,
        SPLIT,
        lambda d: (
            f"{mb(_k(d, SMOL, 1)['wire_bytes_per_step'], '.1f')} (SmolLM2) or "
            f"{mb(_k(d, MINI, 1)['wire_bytes_per_step'], '.1f')} (MiniLM) whatever k is"
        ),
    ),
    Claim(
        B,
        SPLIT,
        lambda d: (
            "SmolLM2 "
            + ", ".join(
                f"{count(_k(d, SMOL, k)['client_peak_mb'])} MB at k = {k}"
                for k in (1, 4, 28)
            )
            + f", against {count(d[SMOL]['whole_model_peak_mb'])} MB for the whole"
        ),
    ),
    Claim(
        B,
        SPLIT,
        lambda d: (
            "k = 1 needs "
            f"{_k(d, SMOL, 1)['client_peak_mb'] / d[SMOL]['whole_model_peak_mb']:.0%}"
            " of it"
        ),
    ),
    Claim(
        B,
        SPLIT,
        lambda d: (
            "MiniLM "
            + ", ".join(
                f"{count(_k(d, MINI, k)['client_peak_mb'])} MB at k = {k}"
                for k in (1, 4)
            )
            + f", against {count(d[MINI]['whole_model_peak_mb'])} MB whole "
            f"({_k(d, MINI, 1)['client_peak_mb'] / d[MINI]['whole_model_peak_mb']:.0%})"
        ),
    ),
    # split_flower_real.json
    Claim(B, SFR, command),
    Claim(
        B,
        SFR,
        lambda d: f"`environment.git_commit` {d['environment']['git_commit'][:7]}",
    ),
    Claim(B, SFR, lambda d: _split_rows(d, "decoding")[0]),
    Claim(B, SFR, lambda d: _split_rows(d, "decoding")[1]),
    Claim(B, SFR, lambda d: f"(`metrics_max_abs_diff`: {d['metrics_max_abs_diff']})"),
    Claim(
        B,
        SFR,
        lambda d: (
            "Flower's evaluation is "
            f"{d['flower']['eval_s'] / d['embedded']['eval_s']:.2f}× the embedded one"
        ),
    ),
    # split_flower_real_discriminative.json
    Claim(B, SFRD, command),
    Claim(
        B,
        SFRD,
        lambda d: f"`environment.git_commit` {d['environment']['git_commit'][:7]}",
    ),
    Claim(B, SFRD, lambda d: _split_rows(d, "evaluation")[0]),
    Claim(B, SFRD, lambda d: _split_rows(d, "evaluation")[1]),
    Claim(
        B,
        SFRD,
        lambda d: (
            f"≈ {mb(d['flower']['split_hidden_bytes'] / _n_clients(d))} a client "
            "and round"
        ),
    ),
    # flower.json
    Claim(B, FLOWER, command),
    *(
        Claim(B, FLOWER, lambda d, c=c, p=p: _flower_row(d, c, p))
        for c in (100, 1000)
        for p in ("shared", "pinned")
    ),
    Claim(B, FLOWER, _echo_ratios),
    Claim(B, FLOWER, _vs_slow_echoes),
    Claim(B, FLOWER, _wake),
    Claim(B, FLOWER, lambda d: f"median of the {d['counted_rounds']} `counted_rounds`"),
    # flower_hops.json
    Claim(B, HOPS_JSON, command),
    *(
        Claim(B, HOPS_JSON, lambda d, c=c, h=h: _hop_row(d, c, h))
        for c in (100, 1000)
        for h in HOPS
    ),
    Claim(B, HOPS_JSON, _hop_compute),
    # flower_glue.json
    Claim(B, GLUE, command),
    Claim(B, GLUE, lambda d: _glue_row(d, 100)),
    Claim(B, GLUE, lambda d: _glue_row(d, 1000)),
    Claim(B, GLUE, _more_than_double),
]


def _ids() -> list[str]:
    seen: dict[tuple[str, str], int] = {}
    ids = []
    for c in CLAIMS:
        key = (c.doc, Path(c.source).name)
        seen[key] = seen.get(key, 0) + 1
        ids.append(f"{c.doc}<-{key[1]}#{seen[key]}")
    return ids


@pytest.mark.parametrize("claim", CLAIMS, ids=_ids())
def test_doc_quotes_the_results_file(claim: Claim):
    quoted = " ".join(claim.quote(load(claim.source)).split())
    assert quoted in doc_text(claim.doc), (
        f"{claim.doc} should quote {quoted!r} from {claim.source}; "
        "update the prose to the committed results"
    )


def test_every_bench_result_is_quoted():
    """Each committed bench JSON backs at least one claim in bench/README.md."""
    results = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "bench/results").glob("*.json")
    }
    quoted = {c.source for c in CLAIMS if c.doc == B}
    assert results <= quoted, sorted(results - quoted)
