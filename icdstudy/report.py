"""The study report: the answer first, then the evidence. Pure Python + numpy/scipy (no torch)."""
from __future__ import annotations

import platform
from pathlib import Path

from . import icd10
from .stats import mcnemar_exact, paired_bootstrap_diff

DEMO_CAVEAT = ("These numbers come from the **synthetic demo data** and the 135M embedded model: they show the "
               "pipeline works and learns, not how well anything codes real encounters. Each synthetic code has its "
               "own phrases, which is why the TF-IDF baseline does so well here. Run the full study for real numbers.")


def _kind(system: str) -> str:
    return system.split("-", 1)[0]


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ratio(a, b) -> float | None:
    return (a / b) if a and b else None


def compare(a: str, b: str, evals: dict, preds: dict) -> dict:
    """A vs B on the rows both predicted: exact-match difference, McNemar, and cost ratios."""
    pa = {r["id"]: r for r in preds[a]}
    pb = {r["id"]: r for r in preds[b]}
    ids = [i for i in pa if i in pb]
    ca = [pa[i]["pred"] == pa[i]["gold"] for i in ids]
    cb = [pb[i]["pred"] == pb[i]["gold"] for i in ids]
    ma, mb = evals[a], evals[b]
    return {
        "a": a, "b": b, "n": len(ids), **paired_bootstrap_diff(ca, cb), "mcnemar": mcnemar_exact(ca, cb),
        "speed_ratio": _ratio(ma.get("samples_per_s"), mb.get("samples_per_s")),
        "latency_ratio": _ratio(mb.get("latency_p50_s"), ma.get("latency_p50_s")),
        "memory_ratio": _ratio(mb.get("peak_mem_mb"), ma.get("peak_mem_mb")),
    }


def pairs(systems: list[str]) -> list[tuple[str, str]]:
    tuned = [s for s in systems if _kind(s) == "lora"]
    others = [s for s in systems if _kind(s) in ("zeroshot", "tfidf")]
    return [(a, b) for a in tuned for b in others]


def verdict(c: dict) -> str:
    d = 100 * c["diff"]
    lo, hi = (100 * x for x in c["ci95"])
    verb = "beats" if d > 0 else ("trails" if d < 0 else "ties with")
    who_a = f"fine-tuned {c['a'].removeprefix('lora-')}"
    who_b = f"zero-shot {c['b'].removeprefix('zeroshot-')}" if _kind(c["b"]) == "zeroshot" else "the TF-IDF baseline"
    p = c["mcnemar"]["p_value"]
    sig = "significant" if p < 0.05 else "not significant"
    cost = []
    if c["speed_ratio"]:
        r = c["speed_ratio"]
        cost.append("about the same throughput" if 0.9 <= r <= 1.1 else f"{r:.2g}× the throughput")
    if c["memory_ratio"]:
        m = c["memory_ratio"]
        cost.append("about the same memory" if 0.9 <= m <= 1.1 else
                    (f"{m:.2g}× less memory" if m > 1 else f"{1 / m:.2g}× more memory"))
    return (f"**{who_a.capitalize()} {verb} {who_b}** by {abs(d):.1f} points of exact match "
            f"(95% CI {lo:+.1f} to {hi:+.1f}; McNemar p = {p:.2g}, {sig}; n = {c['n']})"
            + (f", at {' and '.join(cost)}." if cost else "."))


def _hardware(evals: dict) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    devices = sorted({m.get("device", "?") for m in evals.values()})
    return (f"models ran on {' and '.join(devices)}; host CPU {cpu} ({os.cpu_count()} cores), "
            f"{platform.system()} {platform.release()}")


def render(evals: dict, preds: dict, trains: dict, data: dict, params: dict, plots: list[str]) -> str:
    systems = sorted(evals, key=lambda s: ({"lora": 0, "zeroshot": 1}.get(_kind(s), 2), s))
    comparisons = [compare(a, b, evals, preds) for a, b in pairs(systems) if a in preds and b in preds]
    out = ["# Can a fine-tuned small model code ICD-10-CM better than zero-shot larger models?", ""]
    out += ["## Answer", ""]
    out += [f"- {verdict(c)}" for c in comparisons] or ["- No fine-tuned system was evaluated."]
    if str(params.get("data", {}).get("source")) == "demo":
        out += ["", f"> {DEMO_CAVEAT}"]
    out += ["", "## All systems", "",
            "| system | parameters | exact % (95% CI) | category % | chapter % | valid % | macro-F1 | top-3 % | top-5 % | ECE "
            "| latency p50 s | samples/s | peak memory MB |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in systems:
        m = evals[s]
        lo, hi = m["exact_match_ci95"]
        out.append(f"| {s} | {m.get('params_total', 0) / 1e6:,.1f}M | {_pct(m['exact_match'])} ({_pct(lo)}–{_pct(hi)}) "
                   f"| {_pct(m['category_match'])} | {_pct(m['chapter_match'])} | {_pct(m['valid_rate'])} "
                   f"| {m['macro_f1']:.3f} | {_pct(m.get('top3_match'))} | {_pct(m.get('top5_match'))} "
                   f"| {_num(m.get('ece'))} | {m.get('latency_p50_s') or 0:.3f} "
                   f"| {m.get('samples_per_s') or 0:.2f} | {m.get('peak_mem_mb') or 0:,.0f} |")
    out += ["", "Exact: the whole code; category: its first 3 characters; chapter: its ICD-10-CM chapter. Top-k and ECE "
            "only for systems that rank candidates with scores. Latency is per sample within batches, generation only "
            "(model loading excluded); memory is peak process RSS on CPU or peak allocated CUDA memory.", ""]
    if comparisons:
        out += ["## Paired comparisons", "", "| A | B | n | A − B exact (points) | 95% CI | only A right | only B right "
                "| McNemar p | throughput A/B | memory B/A |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        for c in comparisons:
            lo, hi = c["ci95"]
            out.append(f"| {c['a']} | {c['b']} | {c['n']} | {100 * c['diff']:+.1f} | {100 * lo:+.1f} to {100 * hi:+.1f} "
                       f"| {c['mcnemar']['only_a']} | {c['mcnemar']['only_b']} | {c['mcnemar']['p_value']:.2g} "
                       f"| {c['speed_ratio'] or 0:.2g} | {c['memory_ratio'] or 0:.2g} |")
        out += ["", "CI: paired bootstrap over test rows (5,000 resamples, seed 42). McNemar: exact binomial test on "
                "the rows where exactly one system is right.", ""]
    if trains:
        out += ["## Training", "", "| model | trainable params | steps | epochs | mean train loss | best val loss "
                "| tokens/s | peak memory MB | wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for k, t in sorted(trains.items()):
            out.append(f"| {k} | {t['trainable_params']:,} | {t['steps']} | {t['epochs']} | {t['train_loss']} "
                       f"| {t['eval_loss']} | {t['train_tokens_per_s']} | {t.get('peak_mem_mb', 0):,.0f} | {t['wall_s']} |")
        out.append("")
    d = params.get("data", {})
    out += ["## Data and settings", "",
            f"- Source `{d.get('source')}`, input field `{data.get('input')}`; {data['rows_in']} rows read, "
            f"{data['rows_out']} kept, dropped: {data['dropped'] or 'none'}.",
            f"- {data['n_codes']} codes; train / val / test = {data['train']} / {data['val']} / {data['test']} "
            f"(split per code, seed {params.get('split', {}).get('seed')}).",
            f"- Leakage control: ICD-10 code mentions in the {data.get('input')} texts redacted "
            f"({data['code_mentions_before']} inputs had one before, {data['code_mentions_after']} after); "
            f"label description phrases redacted too: {'yes' if d.get('redact_descriptions') else 'no'}.",
            f"- Decoding: constrained to the label set = {params.get('eval', {}).get('constrained')}, "
            f"top-k {params.get('eval', {}).get('top_k')}, few-shot {params.get('eval', {}).get('few_shot')}.",
            f"- Hardware: {_hardware(evals)}.", ""]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(out)


def per_chapter_accuracy(preds: dict) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, list]] = {}
    for system, rows in preds.items():
        for r in rows:
            ch = icd10.chapter(r["gold"]) or "?"
            table.setdefault(system, {}).setdefault(ch, []).append(r["pred"] == r["gold"])
    return {s: {ch: sum(v) / len(v) for ch, v in chs.items()} for s, chs in table.items()}
