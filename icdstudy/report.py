"""The study report: the answer first, in a coding team's terms, then the evidence. Pure Python + numpy/scipy.

Everything the report chooses (which fine-tuned and which large system lead the answer) it chooses on
validation metrics; test numbers are what it reports. Every paired test it prints (exact match and
coverage at the headline precision, for every pair) is one family, corrected by Holm's method:
"significant" means Holm-adjusted p < 0.05.
"""
from __future__ import annotations

import platform
from pathlib import Path

from . import deploy, icd10, systems
from .stats import holm, mcnemar_exact, paired_bootstrap_diff

DEMO_CAVEAT = ("These numbers come from the **synthetic demo data** (codes in groups of siblings that share a "
               "category, 5 to 7 generated encounters each) and the 135M embedded model: they show that the pipeline "
               "works and learns on a task shaped like the study's, not how well anything codes real encounters. "
               "Run the full study for real numbers.")

SMOKE_BANNER = ("> **SMOKE RUN: these numbers mean nothing.** `study full-study --smoke` ran every stage of the study at "
                "the smallest sizes that exercise it (a few dozen test rows, a few optimizer steps) to show that downloads, "
                "chat templates, training, evaluation and this report work before the GPU hours are spent. Run "
                "`python -m icdstudy.study full-study` for the study's numbers.")
ALPHA = 0.05


class PairingError(ValueError):
    """Two systems' predictions cannot be compared row by row."""


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _usd(x) -> str:
    return "n/a" if x is None else (f"${x:,.2f}" if x >= 0.1 else f"${x:.2g}")


def _coverage(m: dict, k: str) -> str:
    """Coverage at a target, or "none" where validation reached no threshold (nothing is coded without review)."""
    return "none" if m.get(f"threshold_at_{k}_reason") else _pct(m.get(f"coverage_at_{k}"))


def _p(x) -> str:
    return "n/a" if x is None else f"{x:.2g}"


def _ratio(a, b) -> float | None:
    return (a / b) if a and b else None


def paired(ca: list[bool], cb: list[bool]) -> dict:
    """A - B on paired 0/1 outcomes: the difference with its bootstrap CI, and McNemar's exact test."""
    return {"n": len(ca), **paired_bootstrap_diff(ca, cb), "mcnemar": mcnemar_exact(ca, cb)}


def aligned(rows_a: list[dict], rows_b: list[dict], a: str = "A", b: str = "B") -> list[str]:
    """The row ids both systems predicted, after checking they are the same rows with the same gold
    codes (anything else raises PairingError)."""
    pa = {r["id"]: r for r in rows_a}
    pb = {r["id"]: r for r in rows_b}
    if set(pa) != set(pb):
        only = sorted(set(pa) ^ set(pb))
        raise PairingError(f"{a} and {b} predicted different test rows ({len(only)} in one only, e.g. {only[0]}); "
                           "rerun both stages on the same split")
    for i in pa:
        if pa[i]["gold"] != pb[i]["gold"]:
            raise PairingError(f"test row {i} has gold code {pa[i]['gold']} in {a} but {pb[i]['gold']} in {b}: "
                               "their predictions come from different data; rerun both stages")
    return list(pa)


def compare_rows(rows_a: list[dict], rows_b: list[dict], a: str = "A", b: str = "B") -> dict:
    """Exact-match difference (A - B) with its bootstrap CI and McNemar's test on the same rows."""
    ids = aligned(rows_a, rows_b, a, b)
    pa, pb = ({r["id"]: r for r in rows} for rows in (rows_a, rows_b))
    return paired([pa[i]["pred"] == pa[i]["gold"] for i in ids], [pb[i]["pred"] == pb[i]["gold"] for i in ids])


def same_split(ma: dict, mb: dict) -> bool:
    """Both systems were scored on the same test rows (metrics' split_fingerprint, recorded for every system)."""
    return bool(ma.get("split_fingerprint")) and ma.get("split_fingerprint") == mb.get("split_fingerprint")


def coded_rows(system: str, evals: dict, preds: dict, first: dict, target: float) -> dict[str, bool]:
    """Per test row: coded without review by ``system`` at ``target`` (its signal and threshold, both
    chosen on validation, as its metrics record them)."""
    m, k = evals[system], deploy.key(target)
    flags = deploy.coded(preds[system], first, m.get("confidence_signal") or "top1", m.get(f"threshold_at_{k}"))
    return {r["id"]: f for r, f in zip(preds[system], flags)}


def compare(a: str, b: str, evals: dict, preds: dict, first: dict, target: float,
            seed_preds: dict | None = None) -> dict:
    """A vs B on the same test rows: exact match, coverage at ``target`` precision, cost ratios and (with several
    training seeds) in how many seeds the exact-match direction holds. Systems scored on different splits
    are not paired: the result says so (``unpaired``) and carries no numbers."""
    ma, mb = evals[a], evals[b]
    if not same_split(ma, mb):
        return {"a": a, "b": b, "unpaired": (ma.get("split_fingerprint"), mb.get("split_fingerprint"))}
    c = {"a": a, "b": b, **compare_rows(preds[a], preds[b], a, b)}
    ids = [r["id"] for r in preds[a]]
    ca, cb = coded_rows(a, evals, preds, first, target), coded_rows(b, evals, preds, first, target)
    c["coverage"] = paired([ca[i] for i in ids], [cb[i] for i in ids])
    c["seeds"] = seed_agreement(a, b, c, seed_preds or {}, preds)
    return {**c, "speed_ratio": _ratio(ma.get("samples_per_s"), mb.get("samples_per_s")),
            "memory_ratio": _ratio(mb.get("peak_mem_mb"), ma.get("peak_mem_mb"))}


def seed_agreement(a: str, b: str, first: dict, seed_preds: dict, preds: dict) -> dict | None:
    """In how many of A's training seeds the first seed's exact-match direction against B holds. None with
    a single seed."""
    runs = seed_preds.get(a) or {}
    if not runs:
        return None
    sign = (first["diff"] > 0) - (first["diff"] < 0)
    same = 0
    for name, rows in [("first seed", preds[a]), *runs.items()]:
        d = compare_rows(rows, preds[b], f"{a} ({name})", b)["diff"]
        same += ((d > 0) - (d < 0)) == sign
    return {"seeds": 1 + len(runs), "same_direction": same}


def pairs(selected: list[systems.System]) -> list[tuple[str, str]]:
    """Every fine-tuned system against every untrained one, then each system against the one it changes by one
    thing (its entry's `adds`), where both are selected."""
    ids = {s.id for s in selected}
    tuned = [s.id for s in selected if s.fine_tuned]
    others = [s.id for s in selected if not s.fine_tuned]
    out = [(a, b) for a in tuned for b in others]
    for s in selected:
        if s.adds:
            base = s.adds[0]
            if base in ids and (s.id, base) not in out:
                out.append((s.id, base))
    return out


def adjust(comparisons: list[dict]) -> None:
    """Holm-adjusted p-values over every test printed (exact match and coverage of every paired comparison)."""
    tests = [t for c in comparisons if "unpaired" not in c for t in (c, c["coverage"])]
    for t, adjusted in zip(tests, holm([t["mcnemar"]["p_value"] for t in tests])):
        t["p_holm"] = adjusted
        t["significant"] = adjusted < ALPHA


def best(candidates: list[str], vals: dict, k: str) -> str | None:
    """The system a team would pick on validation: the most coverage at the headline precision, then exact match."""
    return max(candidates, key=lambda s: ((vals.get(s) or {}).get(f"coverage_at_{k}") or 0.0,
                                          (vals.get(s) or {}).get("exact_match") or 0.0, s), default=None)


def _difference(t: dict, unit: str) -> str:
    lo, hi = (100 * x for x in t["ci95"])
    return (f"{100 * t['diff']:+.1f} points of {unit} (95% CI {lo:+.1f} to {hi:+.1f}; McNemar p = {_p(t['mcnemar']['p_value'])}, "
            f"Holm-adjusted {_p(t['p_holm'])}: {'significant' if t['significant'] else 'not significant'})")


def unpaired_line(c: dict) -> str:
    fa, fb = c["unpaired"]
    return (f"`{c['a']}` and `{c['b']}` were scored on different test splits (split fingerprints "
            f"`{fa or 'none recorded'}` and `{fb or 'none recorded'}`): not compared. Rerun both on the same data.")


def coverage_phrase(m: dict, k: str, target: float) -> str:
    cov = m.get(f"coverage_at_{k}")
    if cov is None:
        return f"codes no encounter without review ({m.get(f'threshold_at_{k}_reason') or 'no threshold'})"
    lo, hi = m.get(f"coverage_at_{k}_ci95") or (None, None)
    return f"codes {_pct(cov)}% of encounters without review (95% CI {_pct(lo)}–{_pct(hi)})"


def answer(sel: dict, evals: dict, vals: dict, comparisons: dict, target: float, params: dict) -> list[str]:
    """The Answer: the deployment line, the same pair's exact match, what each one-thing change adds, the tally."""
    k = deploy.key(target)
    chosen = [s for s in sel.values() if s.id in evals]
    tuned = [s.id for s in chosen if s.fine_tuned]
    fine_models = {s.model for s in chosen if s.fine_tuned}
    prompted = [s for s in chosen if not s.fine_tuned and not s.floor]
    large = [s.id for s in prompted if s.model not in fine_models]
    note = ""
    if not large:
        large = [s.id for s in prompted]
        note = " (every prompted model here is also a fine-tuned one: the best prompted system stands in)"
    a, b = best(tuned, vals, k), best(large, vals, k)
    out = []
    if a and b:
        ma, mb = evals[a], evals[b]
        cpu = "cpu" in (ma.get("cost_device"), mb.get("cost_device"))
        line = (f"- **At {100 * target:g}% precision, `{a}` ({sel[a].label(ma)}) {coverage_phrase(ma, k, target)} at "
                f"{_usd(ma.get('usd_per_1k'))} per 1,000 encounters; `{b}` ({sel[b].label(mb)}), the best large "
                f"system{note}, {coverage_phrase(mb, k, target)} at {_usd(mb.get('usd_per_1k'))}.**")
        c = comparisons.get((a, b))
        if c and "unpaired" not in c:
            line += f" Difference: {_difference(c['coverage'], 'coverage')}."
            line += f" Exact match {_pct(ma['exact_match'])}% against {_pct(mb['exact_match'])}%: {_difference(c, 'exact match')}."
        elif c:
            line += " " + unpaired_line(c)
        out.append(line)
        if cpu:
            out.append(f"- Costs are measured generation time priced at {_usd(ma.get('usd_per_hour'))} per hour: this "
                       "run used CPUs, so they are CPU time, not what a GPU host would cost (docs/deployment.md).")
        out.append(f"- Both were chosen on validation (the most encounters coded at {100 * target:g}% precision); "
                   "test numbers are reported, never used to choose.")
    elif tuned:
        out.append("- No prompted system was evaluated beside the fine-tuned ones.")
    else:
        out.append("- No fine-tuned system was evaluated.")
    for s in chosen:
        if not s.adds:
            continue
        base = s.adds[0]
        c = comparisons.get((s.id, base))
        if c is None:
            continue
        what = s.adds[1]
        if "unpaired" in c:
            out.append(f"- {what}: " + unpaired_line(c))
            continue
        out.append(f"- **{what}** (`{s.id}` vs `{base}`): {_difference(c, 'exact match')}; "
                   f"{_difference(c['coverage'], f'coverage at {100 * target:g}% precision')}.")
    tested = [t for c in comparisons.values() if "unpaired" not in c for t in (c, c["coverage"])]
    if tested:
        out.append(f"- {sum(t['significant'] for t in tested)} of {len(tested)} paired tests are significant after "
                   "Holm's correction for all of them (exact match and coverage of every pair: "
                   "[Paired comparisons](#paired-comparisons)).")
    return out


# What the report says of each prompt style that shows something retrieved ({k}: the system's `retrieved`).
STYLE_NOTES = {
    "examples": "- Few-shot systems: each input follows its {k} nearest training examples (TF-IDF cosine, 1–{ngram_max}-"
                "grams; never the row itself or a copy of its text), each cut to {max_shot_tokens} tokens, the nearest last.",
    "candidates": "- Shortlist systems: each prompt lists the {k} codes the same retriever ranks highest (knn-tfidf's vote "
                  "over the {neighbours} nearest training inputs, then the codes of the next nearest), best first, each "
                  "with its official description and vote share; decoding still covers every label. A training row's "
                  "list comes from the other training rows, as a test row's does.",
}


def _fewshot_settings(evals: dict, sel: dict, params: dict) -> list[str]:
    """One line per prompt style that shows something retrieved, as the report's systems use it."""
    e, r = params.get("eval", {}), params.get("retrieval", {})
    shown = {sel[s].prompt: sel[s].retrieved for s in evals if s in sel and sel[s].prompt}
    return [STYLE_NOTES[name].format(k=k, ngram_max=r.get("ngram_max"), neighbours=r.get("neighbours"),
                                     max_shot_tokens=e.get("max_shot_tokens") or e.get("max_input_tokens"))
            for name, k in shown.items() if name in STYLE_NOTES]


def _hardware(evals: dict) -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
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
    return out + ["", "Every other table uses the first seed; the paired table says in how many seeds the direction holds.", ""]


def _provenance(bases: dict) -> str:
    """Where each base model's weights came from, with the revision actually used."""
    parts = []
    for key, b in sorted(bases.items()):
        origin = b.get("hub_id") or b.get("package") or b.get("path") or b.get("source")
        rev = b.get("revision")
        parts.append(f"`{key}` = {origin}" + (f" @ `{rev[:19] if rev.startswith('sha256:') else rev[:12]}`" if rev else ""))
    return "; ".join(parts)


def shortlist_section(evals: dict, systems_: list[str]) -> list[str]:
    """Candidate recall beside each shortlist system, and where its answers sit on the lists it was shown."""
    rows = [s for s in systems_ if evals[s].get("candidate_recall") is not None]
    if not rows:
        return []
    out = ["## Shortlists", "", "| system | candidates | candidate recall % | exact % | picked the first candidate % "
           "| picked another listed code % | answered off the list % |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in rows:
        m = evals[s]
        out.append(f"| {s} | {m.get('candidates')} | {_pct(m.get('candidate_recall'))} | {_pct(m['exact_match'])} "
                   f"| {_pct(m.get('picked_first_candidate'))} | {_pct(m.get('picked_other_candidate'))} "
                   f"| {_pct(m.get('picked_off_list'))} |")
    out += ["", "Candidate recall is the share of test rows whose gold code is on the list: the most a system that only "
            "picks from it can reach. The retriever's first candidate is knn-tfidf's answer.", ""]
    return out


def deployment_section(evals: dict, vals: dict, systems_: list[str], targets: list[float], params: dict) -> list[str]:
    head = " | ".join(f"threshold @{100 * t:g} | coverage @{100 * t:g} % (95% CI) | precision @{100 * t:g} %"
                      for t in targets)
    out = ["## Coded without review", "",
           f"| system | signal | {head} | AURC | $ per 1,000 | $ per 1,000 coded @{100 * max(targets):g} |",
           "|---|---|" + "---:|---|---:|" * len(targets) + "---:|---:|---:|"]
    for s in systems_:
        m = evals[s]
        cells = []
        for t in targets:
            k = deploy.key(t)
            lo, hi = m.get(f"coverage_at_{k}_ci95") or (None, None)
            th = m.get(f"threshold_at_{k}")
            cells += ["—" if th is None else f"{th:.3g}",
                      "none" if m.get(f"coverage_at_{k}") is None else f"{_pct(m[f'coverage_at_{k}'])} ({_pct(lo)}–{_pct(hi)})",
                      _pct(m.get(f"precision_at_{k}"))]
        top = deploy.key(max(targets))
        out.append(f"| {s} | {m.get('confidence_signal')} | {' | '.join(cells)} | {_num(m.get('aurc'))} "
                   f"| {_usd(m.get('usd_per_1k'))} | {_usd(m.get(f'usd_per_1k_coded_at_{top}'))} |")
    dep = params.get("deploy", {})
    out += ["", "A system codes an encounter without review when its confidence reaches the threshold for the target "
            "precision. The confidence signal (top-1 probability, its margin over the second, or agreement with the "
            "TF-IDF retriever's first code, then probability) and each threshold were chosen on the validation split: "
            "the signal with the smallest risk-coverage area there, the lowest threshold whose validation precision "
            "reaches the target. Coverage and precision above are on test, where the thresholds were applied as "
            "chosen (Wilson 95% CIs). AURC: area under the test risk-coverage curve (mean error rate over all coverage "
            f"levels; lower is better). Cost: measured generation throughput priced at {_usd(dep.get('usd_per_hour'))} "
            f"per GPU hour or {_usd(dep.get('cpu_usd_per_hour'))} per CPU hour ({dep.get('price_source', 'params deploy')}); "
            "per 1,000 coded: the cost of all encounters divided by the share coded without review.", ""]
    missing = [(s, t) for s in systems_ for t in targets if evals[s].get(f"threshold_at_{deploy.key(t)}_reason")]
    for s, t in missing:
        out.append(f"- `{s}` at {100 * t:g}%: {evals[s][f'threshold_at_{deploy.key(t)}_reason']}.")
    return out + ([""] if missing else [])


def validation_section(trains: dict, vals: dict, evals: dict, systems_: list[str], target: float) -> list[str]:
    t = f"{100 * target:g}"
    out = ["## Chosen on validation", "",
           "The test split was read once, here. Every choice was made on validation: the checkpoint each training run "
           "kept, each system's confidence signal and thresholds, and the systems that lead the answer.", "",
           f"| system | exact % val | exact % test | coverage @{t} % val | coverage @{t} % test |", "|---|---:|---:|---:|---:|"]
    k = deploy.key(target)
    for s in systems_:
        v, m = vals.get(s) or {}, evals[s]
        out.append(f"| {s} | {_pct(v.get('exact_match'))} | {_pct(m['exact_match'])} | {_coverage(v, k)} "
                   f"| {_coverage(m, k)} |")
    if trains:
        out += ["", "| training run | checkpoint kept by | kept step | of steps | validation exact % at that step "
                "| validation loss there |", "|---|---|---:|---:|---:|---:|"]
        for run, tr in sorted(trains.items()):
            out.append(f"| {run} | {tr.get('select_by', 'loss')} | {tr.get('best_step', 'n/a')} | {tr['steps']} "
                       f"| {_pct(tr.get('best_val_exact_match'))} | {tr['eval_loss']} |")
    return out + [""]


def near_copy_section(near: dict | None, preds: dict, systems_: list[str]) -> list[str]:
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
    for s in systems_:
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


def paired_table(comparisons: list[dict], target: float) -> list[str]:
    done = [c for c in comparisons if "unpaired" not in c]
    if not done:
        return []
    t = f"{100 * target:g}"
    out = ["## Paired comparisons", "",
           f"| A | B | n | exact A − B (points) | 95% CI | McNemar p | Holm p | coverage @{t} A − B (points) | 95% CI "
           "| McNemar p | Holm p | throughput A/B | memory B/A | seeds in the same direction |",
           "|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]

    def cells(x):
        lo, hi = x["ci95"]
        mark = "**" if x["significant"] else ""
        return (f"{mark}{100 * x['diff']:+.1f}{mark} | {100 * lo:+.1f} to {100 * hi:+.1f} | {_p(x['mcnemar']['p_value'])} "
                f"| {mark}{_p(x['p_holm'])}{mark}")

    for c in done:
        seeds = c.get("seeds")
        held = f"{seeds['same_direction']} of {seeds['seeds']}" if seeds else "—"
        out.append(f"| {c['a']} | {c['b']} | {c['n']} | {cells(c)} | {cells(c['coverage'])} "
                   f"| {c['speed_ratio'] or 0:.2g} | {c['memory_ratio'] or 0:.2g} | {held} |")
    out += ["", "Every fine-tuned system against every other system, and each system against the one it extends by one "
            "thing (fine-tuning, shortlists). CI: paired bootstrap over test rows (5,000 resamples, seed 42). McNemar: "
            f"exact binomial test on the rows where exactly one of the two is right (exact) or coded without review at "
            f"{t}% precision (coverage). Holm p: adjusted for all {2 * len(done)} tests in this table together; bold = "
            "significant after that adjustment (Holm p < 0.05).", ""]
    return out


def render(evals: dict, preds: dict, trains: dict, data: dict, params: dict, plots: list[str],
           seed_preds: dict | None = None, bases: dict | None = None, inputs: dict | None = None,
           near: dict | None = None, vals: dict | None = None) -> str:
    """``evals``/``vals``: test/validation metrics by system; ``preds``: test predictions; ``inputs``: test row id ->
    input text, for the error examples; ``near``: the near-copy test rows (threshold, n, ids)."""
    vals = vals or {}
    sel = {s.id: s for s in systems.selected(params)}
    unknown = sorted(set(evals) - set(sel))
    if unknown:
        raise PairingError(f"{unknown[0]} has metrics but is no system of params.yaml: the report reads the table's systems")
    order = list(sel)
    ordered = sorted(evals, key=lambda s: (order.index(s), s))
    targets = sorted((params.get("deploy") or {}).get("target_precision") or [0.95])
    target = max(targets)
    retriever = systems.retriever_floor(params).id
    first = {r["id"]: r["pred"] for r in preds.get(retriever, [])}
    comparisons = {(a, b): compare(a, b, evals, preds, first, target, seed_preds)
                   for a, b in pairs([sel[s] for s in ordered]) if a in preds and b in preds}
    adjust(list(comparisons.values()))
    out = ["# Can a fine-tuned small model code ICD-10-CM better than zero-shot larger models?", ""]
    if params.get("smoke"):
        out += [SMOKE_BANNER, ""]
    out += ["## Answer", ""] + answer(sel, evals, vals, comparisons, target, params)
    out += [f"- {unpaired_line(c)}" for c in comparisons.values() if "unpaired" in c]
    if str(params.get("data", {}).get("source")) == "demo":
        out += ["", f"> {DEMO_CAVEAT}"]
    k = deploy.key(target)
    out += ["", "## All systems", "",
            f"| system | parameters | exact % (95% CI) | category % | chapter % | valid % | macro-F1 | top-3 % | top-5 % "
            f"| ECE | coverage @{100 * target:g} % | $ per 1,000 | latency p50 s | samples/s | peak memory MB |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in ordered:
        m = evals[s]
        lo, hi = m["exact_match_ci95"]
        out.append(f"| {s} | {m.get('params_total', 0) / 1e6:,.1f}M | {_pct(m['exact_match'])} ({_pct(lo)}–{_pct(hi)}) "
                   f"| {_pct(m['category_match'])} | {_pct(m['chapter_match'])} | {_pct(m['valid_rate'])} "
                   f"| {m['macro_f1']:.3f} | {_pct(m.get('top3_match'))} | {_pct(m.get('top5_match'))} "
                   f"| {_num(m.get('ece'))} | {_coverage(m, k)} | {_usd(m.get('usd_per_1k'))} "
                   f"| {m.get('latency_p50_s') or 0:.3f} | {m.get('samples_per_s') or 0:.2f} | {m.get('peak_mem_mb') or 0:,.0f} |")
    out += ["", "Test split. Exact: the whole code; category: its first 3 characters; chapter: its ICD-10-CM chapter. "
            "Top-k and ECE only for systems that rank candidates with scores. Latency is per sample within batches, "
            "generation only (model loading excluded); memory is peak process RSS on CPU or peak allocated CUDA memory.", ""]
    out += deployment_section(evals, vals, ordered, targets, params)
    out += validation_section(trains, vals, evals, ordered, target)
    out += shortlist_section(evals, ordered)
    out += paired_table(list(comparisons.values()), target)
    scored = [s for s in ordered if s in preds]
    if scored:
        out += error_section(error_breakdown({s: preds[s] for s in scored}), preds, inputs or {}, scored, sel)
    out += near_copy_section(near, preds, scored)
    out += seed_table(evals)
    if trains:
        out += ["## Training", "", "| run | trainable params | steps | epochs | mean train loss | val loss at the kept step "
                "| tokens/s | peak memory MB | wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for run, t in sorted(trains.items()):
            out.append(f"| {run} | {t['trainable_params']:,} | {t['steps']} | {t['epochs']} | {t['train_loss']} "
                       f"| {t['eval_loss']} | {t['train_tokens_per_s']} | {t.get('peak_mem_mb', 0):,.0f} | {t['wall_s']} |")
        out.append("")
    d, e = params.get("data", {}), params.get("eval", {})
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
            f"- Decoding: constrained to the label set = {e.get('constrained')}, top-k {e.get('top_k')}, examples in "
            f"the zero-shot and fine-tuned prompts: {e.get('few_shot')}.",
            *_fewshot_settings(evals, sel, params),
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


def error_section(breakdown: dict, preds: dict, inputs: dict[str, str], systems_: list[str], sel: dict,
                  examples: int = 2) -> list[str]:
    """The table of error kinds for every system, then a few errors of each kind of the fine-tuned ones."""
    out = ["## Where the errors land", "",
           "| system | correct | right category, wrong code | right chapter, wrong category | wrong chapter | no prediction |",
           "|---|---:|---:|---:|---:|---:|"]
    for s in systems_:
        b = breakdown[s]
        wrong = sum(b[k] for k in ERROR_KINDS)
        cells = " | ".join(f"{b[k]} ({100 * b[k] / wrong:.0f}%)" if wrong else "0" for k in ERROR_KINDS)
        out.append(f"| {s} | {b['correct']} | {cells} |")
    out += ["", "Percentages are shares of the system's errors. A wrong code in the right category is a near miss "
            "(laterality, type, stage, encounter); a wrong chapter is a different disease.", ""]
    for s in (x for x in systems_ if sel[x].fine_tuned and x in preds):
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
