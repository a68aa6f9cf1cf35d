"""The study report: the answer first, then the evidence. Pure Python + numpy/scipy (no torch)."""
from __future__ import annotations

import platform
from pathlib import Path

from . import icd10
from .stats import mcnemar_exact, paired_bootstrap_diff
from .systems import kind as _kind

DEMO_CAVEAT = ("These numbers come from the **synthetic demo data** (codes in groups of siblings that share a "
               "category, 5 to 7 generated encounters each) and the 135M embedded model: they show that the pipeline "
               "works and learns on a task shaped like the study's, not how well anything codes real encounters. "
               "Run the full study for real numbers.")

SMOKE_BANNER = ("> **SMOKE RUN: these numbers mean nothing.** `study full-study --smoke` ran every stage of the study at "
                "the smallest sizes that exercise it (a few dozen test rows, a few optimizer steps) to show that downloads, "
                "chat templates, training, evaluation and this report work before the GPU hours are spent. Run "
                "`python -m icdstudy.study full-study` for the study's numbers.")


class PairingError(ValueError):
    """Two systems' predictions cannot be compared row by row."""


def _model(system: str) -> str:
    return system[len(_kind(system)) + 1:]


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ratio(a, b) -> float | None:
    return (a / b) if a and b else None


def compare_rows(rows_a: list[dict], rows_b: list[dict], a: str = "A", b: str = "B") -> dict:
    """Exact-match difference (A - B) with its bootstrap CI and McNemar's test. Both must have predicted
    the same rows with the same gold codes; anything else raises PairingError."""
    pa = {r["id"]: r for r in rows_a}
    pb = {r["id"]: r for r in rows_b}
    if set(pa) != set(pb):
        only = sorted(set(pa) ^ set(pb))
        raise PairingError(f"{a} and {b} predicted different test rows ({len(only)} in one only, e.g. {only[0]}); "
                           "rerun both stages on the same split")
    ids = list(pa)
    for i in ids:
        if pa[i]["gold"] != pb[i]["gold"]:
            raise PairingError(f"test row {i} has gold code {pa[i]['gold']} in {a} but {pb[i]['gold']} in {b}: "
                               "their predictions come from different data; rerun both stages")
    ca = [pa[i]["pred"] == pa[i]["gold"] for i in ids]
    cb = [pb[i]["pred"] == pb[i]["gold"] for i in ids]
    return {"n": len(ids), **paired_bootstrap_diff(ca, cb), "mcnemar": mcnemar_exact(ca, cb)}


def same_split(ma: dict, mb: dict) -> bool:
    """Both systems were scored on the same test rows (metrics' split_fingerprint, recorded by every stage)."""
    return bool(ma.get("split_fingerprint")) and ma.get("split_fingerprint") == mb.get("split_fingerprint")


def compare(a: str, b: str, evals: dict, preds: dict, seed_preds: dict | None = None) -> dict:
    """A vs B on the same test rows: exact-match difference, McNemar, cost ratios, and (with several
    training seeds) in how many seeds the verdict holds. Systems scored on different splits are not
    paired: the result says so (``unpaired``) and carries no numbers."""
    ma, mb = evals[a], evals[b]
    if not same_split(ma, mb):
        return {"a": a, "b": b, "unpaired": (ma.get("split_fingerprint"), mb.get("split_fingerprint"))}
    c = {"a": a, "b": b, **compare_rows(preds[a], preds[b], a, b)}
    c["seeds"] = seed_agreement(a, b, c, seed_preds or {}, preds)
    return {
        **c,
        "speed_ratio": _ratio(ma.get("samples_per_s"), mb.get("samples_per_s")),
        "latency_ratio": _ratio(mb.get("latency_p50_s"), ma.get("latency_p50_s")),
        "memory_ratio": _ratio(mb.get("peak_mem_mb"), ma.get("peak_mem_mb")),
    }


# The fine-tuned systems, and what each is compared with, in the order the verdicts are listed.
TUNED = ("lora", "lora-shortlist")
OPPONENTS = ("zeroshot", "fewshot", "shortlist", "tfidf", "knn")
ORDER = {k: i for i, k in enumerate(TUNED + OPPONENTS)}


def pairs(systems: list[str]) -> list[tuple[str, str]]:
    tuned = sorted((s for s in systems if _kind(s) in TUNED), key=lambda s: (ORDER[_kind(s)], s))
    others = sorted((s for s in systems if _kind(s) in OPPONENTS), key=lambda s: (OPPONENTS.index(_kind(s)), s))
    return [(a, b) for a in tuned for b in others]


def shortlist_pairs(systems: list[str]) -> list[tuple[str, str]]:
    """(lora-shortlist-<m>, lora-<m>) for every model fine-tuned both ways: did the candidates help?"""
    return [(s, f"lora-{_model(s)}") for s in sorted(systems) if _kind(s) == "lora-shortlist"
            and f"lora-{_model(s)}" in systems]


def describe(system: str, m: dict | None = None) -> str:
    """A system as a sentence names it."""
    kind, model = _kind(system), _model(system)
    if kind == "lora":
        return f"fine-tuned {model}"
    if kind == "lora-shortlist":
        return f"fine-tuned {model} with shortlists"
    if kind == "zeroshot":
        return f"zero-shot {model}"
    if kind == "fewshot":
        k = (m or {}).get("few_shot")
        return f"few-shot {model}" + (f" ({k} retrieved examples)" if k else "")
    if kind == "shortlist":
        n = (m or {}).get("candidates")
        return f"zero-shot {model} with a shortlist" + (f" ({n} retrieved codes)" if n else "")
    return {"tfidf-logreg": "the TF-IDF baseline", "knn-tfidf": "the TF-IDF nearest-neighbour floor"}.get(system, system)


def seed_agreement(a: str, b: str, first: dict, seed_preds: dict, preds: dict) -> dict | None:
    """In how many of A's training seeds the first seed's verdict against B holds: the same
    direction, and significant (McNemar p < 0.05). None with a single seed."""
    runs = seed_preds.get(a) or {}
    if not runs:
        return None
    sign = (first["diff"] > 0) - (first["diff"] < 0)
    same = significant = 0
    for name, rows in [("first seed", preds[a]), *runs.items()]:
        c = compare_rows(rows, preds[b], f"{a} ({name})", b)
        s = (c["diff"] > 0) - (c["diff"] < 0)
        same += s == sign
        significant += s == sign and c["mcnemar"]["p_value"] < 0.05
    return {"seeds": 1 + len(runs), "same_direction": same, "significant": significant}


def unpaired_line(c: dict) -> str:
    fa, fb = c["unpaired"]
    return (f"`{c['a']}` and `{c['b']}` were scored on different test splits (split fingerprints "
            f"`{fa or 'none recorded'}` and `{fb or 'none recorded'}`): not compared. Rerun both on the same data.")


def shortlist_verdict(c: dict) -> str:
    """Whether candidate shortlists helped a fine-tuned model, and by how much."""
    model = _model(c["b"])
    if "unpaired" in c:
        return unpaired_line(c)
    d, p = 100 * c["diff"], c["mcnemar"]["p_value"]
    lo, hi = (100 * x for x in c["ci95"])
    if p < 0.05:
        head = f"**Shortlists {'help' if d > 0 else 'hurt'} fine-tuned {model}**: {abs(d):.1f} points of exact match " \
               f"{'gained' if d > 0 else 'lost'}, significant"
    else:
        head = (f"**Fine-tuned {model} {'gains' if d >= 0 else 'loses'} {abs(d):.1f} points of exact match with "
                "shortlists**, not significant")
    return (f"{head} (`{c['a']}` vs `{c['b']}`; 95% CI {lo:+.1f} to {hi:+.1f}; McNemar p = {p:.2g}; n = {c['n']}).")


def verdict(c: dict, evals: dict | None = None) -> str:
    if "unpaired" in c:
        return unpaired_line(c)
    d = 100 * c["diff"]
    lo, hi = (100 * x for x in c["ci95"])
    verb = "beats" if d > 0 else ("trails" if d < 0 else "ties with")
    who_a = describe(c["a"])
    who_b = describe(c["b"], (evals or {}).get(c["b"]))
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
    seeds = c.get("seeds")
    held = (f" It holds in {seeds['same_direction']} of {seeds['seeds']} training seeds "
            f"(significant in {seeds['significant']}).") if seeds else ""
    return (f"**{who_a[0].upper() + who_a[1:]} {verb} {who_b}** by {abs(d):.1f} points of exact match "
            f"(`{c['a']}` vs `{c['b']}`; 95% CI {lo:+.1f} to {hi:+.1f}; McNemar p = {p:.2g}, {sig}; n = {c['n']})"
            + (f", at {' and '.join(cost)}." if cost else ".") + held)


def _fewshot_settings(evals: dict, params: dict) -> list[str]:
    e, r = params.get("eval", {}), params.get("retrieval", {})
    lines = []
    if any(_kind(s) == "fewshot" for s in evals):
        lines.append(f"- Few-shot systems: each test input follows its {e.get('retrieval_k')} nearest training examples "
                     f"(TF-IDF cosine, 1–{r.get('ngram_max')}-grams; never the row itself or a copy of its text), "
                     f"each cut to {e.get('max_shot_tokens') or e.get('max_input_tokens')} tokens, the nearest last.")
    if any(_kind(s) in ("shortlist", "lora-shortlist") for s in evals):
        lines.append(f"- Shortlist systems: each prompt lists the {e.get('candidates')} codes the same retriever ranks "
                     f"highest (knn-tfidf's vote over the {r.get('neighbours')} nearest training inputs, then the codes of "
                     "the next nearest), best first, each with its official description and vote share; decoding still "
                     "covers every label. A training row's list comes from the other training rows, as a test row's does.")
    if "knn-tfidf" in evals:
        lines.append(f"- knn-tfidf: the code with the largest summed similarity among the {r.get('neighbours')} "
                     "nearest training inputs (same retriever): what an LLM adds beyond retrieval.")
    return lines


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


def seed_table(evals: dict) -> list[str]:
    """Mean, SD and range of exact match over training seeds, for models trained with several."""
    rows = [(s, m["seeds"]) for s, m in sorted(evals.items()) if len((m.get("seeds") or {}).get("seeds", [])) > 1]
    if not rows:
        return []
    out = ["## Training seeds", "", "| system | seeds | exact % by seed | mean % | SD (points) | range % |",
           "|---|---|---|---:|---:|---|"]
    for s, sd in rows:
        by = ", ".join(f"{k}: {_pct(v)}" for k, v in sd["exact_match_by_seed"].items())
        out.append(f"| {s} | {len(sd['seeds'])} | {by} | {_pct(sd['exact_match_mean'])} | {_pct(sd['exact_match_sd'])} "
                   f"| {_pct(sd['exact_match_min'])}–{_pct(sd['exact_match_max'])} |")
    return out + ["", "The table and verdicts above use the first seed; the verdicts say in how many seeds they hold.", ""]


def _provenance(bases: dict) -> str:
    """Where each base model's weights came from, with the revision actually used."""
    parts = []
    for key, b in sorted(bases.items()):
        origin = b.get("hub_id") or b.get("package") or b.get("path") or b.get("source")
        rev = b.get("revision")
        parts.append(f"`{key}` = {origin}" + (f" @ `{rev[:19] if rev.startswith('sha256:') else rev[:12]}`" if rev else ""))
    return "; ".join(parts)


def shortlist_section(evals: dict, systems: list[str]) -> list[str]:
    """Candidate recall beside each shortlist system, and where its answers sit on the lists it was shown."""
    rows = [s for s in systems if _kind(s) in ("shortlist", "lora-shortlist")]
    if not rows:
        return []
    out = ["## Shortlists", "", "| system | candidates | candidate recall % | exact % | picked the first candidate % "
           "| picked another listed code % | answered off the list % |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in rows:
        m = evals[s]
        out.append(f"| {s} | {m.get('candidates')} | {_pct(m.get('candidate_recall'))} | {_pct(m['exact_match'])} "
                   f"| {_pct(m.get('picked_first_candidate'))} | {_pct(m.get('picked_other_candidate'))} "
                   f"| {_pct(m.get('picked_off_list'))} |")
    knn = evals.get("knn-tfidf")
    out += ["", "Candidate recall is the share of test rows whose gold code is on the list: the most a system that only "
            "picks from it can reach." + (f" The retriever's first candidate is knn-tfidf's answer, right on "
                                          f"{_pct(knn['exact_match'])}% of rows." if knn else ""), ""]
    return out


def near_copy_section(near: dict | None, preds: dict, systems: list[str]) -> list[str]:
    """Exact match on the test rows that have a near copy in training, against the rest."""
    if not near:
        return []
    ids = set(near["ids"])
    out = ["## Near copies", "", f"{len(ids)} of {near['n']} test rows have a training row with TF-IDF cosine similarity "
           f">= {near['threshold']} (`datacard.near_copy_similarity`). Retrieval-based systems (the floors, few-shot, "
           "shortlists) can score on those by finding the copy; read their numbers against this.", ""]
    if not ids or len(ids) == near["n"]:
        return out
    out += ["| system | exact % on rows with a near copy | exact % on the others |", "|---|---:|---:|"]
    for s in systems:
        hit = [r["pred"] == r["gold"] for r in preds[s] if r["id"] in ids]
        rest = [r["pred"] == r["gold"] for r in preds[s] if r["id"] not in ids]
        out.append(f"| {s} | {_pct(sum(hit) / len(hit)) if hit else 'n/a'} | {_pct(sum(rest) / len(rest)) if rest else 'n/a'} |")
    return out + [""]


def _split_line(evals: dict) -> str:
    groups: dict[str, list[str]] = {}
    for s, m in evals.items():
        groups.setdefault(m.get("split_fingerprint") or "none recorded", []).append(s)
    if len(groups) == 1:
        (fp, _), = groups.items()
        return f"- Every system was scored on the same test rows (split fingerprint `{fp}`)."
    return "- Systems were scored on different test rows and are paired only within a split: " + "; ".join(
        f"`{fp}`: {', '.join(sorted(names))}" for fp, names in sorted(groups.items())) + "."


def render(evals: dict, preds: dict, trains: dict, data: dict, params: dict, plots: list[str],
           seed_preds: dict | None = None, bases: dict | None = None, inputs: dict | None = None,
           near: dict | None = None) -> str:
    """``inputs``: test row id -> input text, for the error examples; ``near``: the near-copy test rows
    (threshold, n, ids)."""
    systems = sorted(evals, key=lambda s: (ORDER.get(_kind(s), 9), s))
    comparisons = [compare(a, b, evals, preds, seed_preds) for a, b in pairs(systems) if a in preds and b in preds]
    helped = [compare(a, b, evals, preds) for a, b in shortlist_pairs(systems) if a in preds and b in preds]
    out = ["# Can a fine-tuned small model code ICD-10-CM better than zero-shot larger models?", ""]
    if params.get("smoke"):
        out += [SMOKE_BANNER, ""]
    out += ["## Answer", ""]
    out += [f"- {verdict(c, evals)}" for c in comparisons] or ["- No fine-tuned system was evaluated."]
    out += [f"- {shortlist_verdict(c)}" for c in helped]
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
    out += shortlist_section(evals, systems)
    paired = [c for c in comparisons + helped if "unpaired" not in c]
    if paired:
        out += ["## Paired comparisons", "", "| A | B | n | A − B exact (points) | 95% CI | only A right | only B right "
                "| McNemar p | throughput A/B | memory B/A |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        for c in paired:
            c = {"speed_ratio": None, "memory_ratio": None, **c}
            lo, hi = c["ci95"]
            out.append(f"| {c['a']} | {c['b']} | {c['n']} | {100 * c['diff']:+.1f} | {100 * lo:+.1f} to {100 * hi:+.1f} "
                       f"| {c['mcnemar']['only_a']} | {c['mcnemar']['only_b']} | {c['mcnemar']['p_value']:.2g} "
                       f"| {c['speed_ratio'] or 0:.2g} | {c['memory_ratio'] or 0:.2g} |")
        out += ["", "CI: paired bootstrap over test rows (5,000 resamples, seed 42). McNemar: exact binomial test on "
                "the rows where exactly one system is right.", ""]
    scored = [s for s in systems if s in preds]
    if scored:
        out += error_section(error_breakdown({s: preds[s] for s in scored}), preds, inputs or {}, scored)
    out += near_copy_section(near, preds, scored)
    out += seed_table(evals)
    if trains:
        out += ["## Training", "", "| run | trainable params | steps | epochs | mean train loss | best val loss "
                "| tokens/s | peak memory MB | wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for k, t in sorted(trains.items()):
            out.append(f"| {k} | {t['trainable_params']:,} | {t['steps']} | {t['epochs']} | {t['train_loss']} "
                       f"| {t['eval_loss']} | {t['train_tokens_per_s']} | {t.get('peak_mem_mb', 0):,.0f} | {t['wall_s']} |")
        out.append("")
    d = params.get("data", {})
    out += ["## Data and settings", "",
            f"- Source `{d.get('source')}`"
            + (f" (revision `{data['source_revision']}`)" if data.get("source_revision") else "")
            + f", input field `{data.get('input')}`; {data['rows_in']} rows read, "
            f"{data['rows_out']} kept, dropped: {data['dropped'] or 'none'}.",
            f"- {data['n_codes']} codes; train / val / test = {data['train']} / {data['val']} / {data['test']} "
            f"(split per code, seed {params.get('split', {}).get('seed')}).",
            f"- Leakage control: ICD-10 code mentions in the {data.get('input')} texts redacted "
            f"({data['code_mentions_before']} inputs had one before, {data['code_mentions_after']} after); "
            f"label description phrases redacted too: {'yes' if d.get('redact_descriptions') else 'no'}.",
            f"- Decoding: constrained to the label set = {params.get('eval', {}).get('constrained')}, "
            f"top-k {params.get('eval', {}).get('top_k')}, examples in the zero-shot and fine-tuned prompts: "
            f"{params.get('eval', {}).get('few_shot')}.",
            *_fewshot_settings(evals, params),
            _split_line(evals),
            *([f"- Base models: {_provenance(bases)}."] if bases else []),
            f"- Hardware: {_hardware(evals)}.", ""]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(out)


ERROR_KINDS = ("right category, wrong code", "right chapter, wrong category", "wrong chapter", "no prediction")


def error_kind(gold: str, pred: str | None) -> str | None:
    """Where a wrong prediction lands in the ICD-10-CM hierarchy; None when it is right."""
    if pred == gold:
        return None
    if not pred:
        return "no prediction"
    if icd10.category(pred) == icd10.category(gold):
        return "right category, wrong code"
    return "right chapter, wrong category" if icd10.chapter(pred) == icd10.chapter(gold) else "wrong chapter"


def error_breakdown(preds: dict) -> dict[str, dict[str, int]]:
    """Per system: its correct rows, and its errors counted by ERROR_KINDS."""
    out = {}
    for system, rows in preds.items():
        kinds = [error_kind(r["gold"], r["pred"]) for r in rows]
        out[system] = {"correct": kinds.count(None), **{k: kinds.count(k) for k in ERROR_KINDS}}
    return out


def error_section(breakdown: dict, preds: dict, inputs: dict[str, str], systems: list[str], examples: int = 2) -> list[str]:
    """The table of error kinds for every system, then a few errors of each kind of the fine-tuned ones."""
    out = ["## Where the errors land", "",
           "| system | correct | right category, wrong code | right chapter, wrong category | wrong chapter | no prediction |",
           "|---|---:|---:|---:|---:|---:|"]
    for s in systems:
        b = breakdown[s]
        wrong = sum(b[k] for k in ERROR_KINDS)
        cells = " | ".join(f"{b[k]} ({100 * b[k] / wrong:.0f}%)" if wrong else "0" for k in ERROR_KINDS)
        out.append(f"| {s} | {b['correct']} | {cells} |")
    out += ["", "Percentages are shares of the system's errors. A wrong code in the right category is a near miss "
            "(laterality, type, stage, encounter); a wrong chapter is a different disease.", ""]
    for s in (x for x in systems if _kind(x) in TUNED and x in preds):
        rows = [(error_kind(r["gold"], r["pred"]), r) for r in preds[s]]
        shown = [pair for kind in ERROR_KINDS[:3] for pair in [(k, r) for k, r in rows if k == kind][:examples]]
        if not shown:
            continue
        out += [f"Examples of `{s}`'s errors:", "", "| kind | gold | predicted | input (excerpt) |", "|---|---|---|---|"]
        for kind, r in shown:
            text = " ".join(inputs.get(r["id"], "").split())
            excerpt = (text[:150] + " …") if len(text) > 150 else text
            out.append(f"| {kind} | {icd10.dotted(r['gold'])} {icd10.description(r['gold']) or ''} "
                       f"| {icd10.dotted(r['pred']) if r['pred'] else '—'} {icd10.description(r['pred']) or '' if r['pred'] else ''} "
                       f"| {excerpt.replace('|', '/')} |")
        out.append("")
    return out


def per_chapter_accuracy(preds: dict) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, list]] = {}
    for system, rows in preds.items():
        for r in rows:
            ch = icd10.chapter(r["gold"]) or "?"
            table.setdefault(system, {}).setdefault(ch, []).append(r["pred"] == r["gold"])
    return {s: {ch: sum(v) / len(v) for ch, v in chs.items()} for s, chs in table.items()}
