"""The study report: the answer first, in a coding team's terms, then the evidence. Pure Python + numpy/scipy.

Everything the report chooses (which fine-tuned and which large system lead the answer) it chooses on
validation metrics; test numbers are what it reports. Every paired test it prints (exact match and
coverage at the headline precision, for every pair) is one family, corrected by Holm's method:
"significant" means Holm-adjusted p < 0.05.
"""
from __future__ import annotations

import platform
from pathlib import Path

from icdstudy.analysis import deploy
from icdstudy.core import icd10, systems
from icdstudy.analysis.stats import holm, mcnemar_exact, paired_bootstrap_diff

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
    """Per test row: coded without review by ``system`` at ``target`` (its signal, chosen on validation, and its
    threshold, certified on calibration, as its metrics record them)."""
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
    k = deploy.key(target)
    if ma.get(f"threshold_at_{k}") is not None and mb.get(f"threshold_at_{k}") is not None:
        ca, cb = coded_rows(a, evals, preds, first, target), coded_rows(b, evals, preds, first, target)
        c["coverage"] = paired([ca[i] for i in ids], [cb[i] for i in ids])
    else:  # a looser, uncertified rule must not win on coverage: both compared by what coding costs with review
        c["coverage"] = None
        c["not_certified"] = [s for s, m in ((a, ma), (b, mb)) if m.get(f"threshold_at_{k}") is None]
    c["with_review"] = (ma.get(f"usd_per_1k_with_review_at_{k}"), mb.get(f"usd_per_1k_with_review_at_{k}"))
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


def primary_pairs(sel: dict, vals: dict, evals: dict, target: float, params: dict) -> set[tuple[str, str]]:
    """The comparisons params `comparisons.primary` declares before any result: `headline`, the best fine-tuned
    system against the best large prompted one (both chosen on validation); `adds`, each system against the one
    its entry says it changes by one thing."""
    declared = set((params.get("comparisons") or {}).get("primary") or ["headline", "adds"])
    out = set()
    if "headline" in declared:
        a, b, _ = headline_pair(sel, evals, vals, target)
        if a and b:
            out.add((a, b))
    if "adds" in declared:
        out |= {(s.id, s.adds[0]) for s in sel.values() if s.adds and s.id in evals and s.adds[0] in evals}
    return out


def adjust(comparisons: dict, primary: set[tuple[str, str]]) -> None:
    """Holm-adjusted p-values within each family: the primary comparisons (the Answer's), and every other pair
    (exploratory). Each family holds the exact-match test of its pairs and the coverage test of those whose two
    systems are both certified."""
    for family, pairs_ in (("primary", [c for pair, c in comparisons.items() if pair in primary]),
                           ("exploratory", [c for pair, c in comparisons.items() if pair not in primary])):
        tests = [t for c in pairs_ if "unpaired" not in c for t in (c, c["coverage"]) if t is not None]
        for c in pairs_:
            c["family"] = family
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


def headline_pair(sel: dict, evals: dict, vals: dict, target: float) -> tuple[str | None, str | None, str]:
    """The best fine-tuned system and the best large prompted one, both chosen on validation; a note where every
    prompted model is also fine-tuned (the best prompted one stands in)."""
    k = deploy.key(target)
    chosen = [s for s in sel.values() if s.id in evals]
    fine_models = {s.model for s in chosen if s.fine_tuned}
    prompted = [s for s in chosen if not s.fine_tuned and not s.floor]
    large, note = [s.id for s in prompted if s.model not in fine_models], ""
    if not large:
        large = [s.id for s in prompted]
        note = " (every prompted model here is also a fine-tuned one: the best prompted system stands in)"
    return best([s.id for s in chosen if s.fine_tuned], vals, k), best(large, vals, k), note


def certified_phrase(s: str, sel: dict, m: dict, k: str, role: str = "") -> str:
    """What ``s`` does on test at the threshold certified for target ``k``: coverage and the precision reached."""
    name = f"`{s}` ({sel[s].label(m)}){role}"
    if m.get(f"threshold_at_{k}") is None:
        return f"{name} is not certified ({m.get(f'threshold_at_{k}_reason') or 'no threshold'}): every encounter goes to review"
    cov, (clo, chi) = m.get(f"coverage_at_{k}"), m.get(f"coverage_at_{k}_ci95") or (None, None)
    if not m.get(f"coverage_at_{k}"):
        return f"{name} codes no test encounter without review (none reached its certified threshold)"
    plo, phi = m.get(f"precision_ci_at_{k}") or (None, None)
    return (f"{name} codes {_pct(cov)}% of test encounters without review (95% CI {_pct(clo)}–{_pct(chi)}) at "
            f"{_pct(m.get(f'precision_at_{k}'))}% precision on test (95% CI {_pct(plo)}–{_pct(phi)})")


def headline(a: str, b: str, sel: dict, evals: dict, vals: dict, targets: list[float], note: str) -> str:
    """The Answer's first line: what the two systems code without review at the highest target, with the precision
    the test split showed; where neither is certified, says so, with the best system certified at a lower target."""
    target = max(targets)
    k = deploy.key(target)
    cert = evals[a].get(f"certified_at_{k}") or {}
    n, delta = cert.get("calibration_rows"), cert.get("delta")
    if any(evals[s].get(f"threshold_at_{k}") is not None for s in (a, b)):
        return (f"- **At {100 * target:g}% precision, certified with δ = {delta:g} on {n} calibration rows: "
                f"{certified_phrase(a, sel, evals[a], k)}; "
                f"{certified_phrase(b, sel, evals[b], k, f', the best large system{note},')}.**")
    line = (f"- **No system is certified at {100 * target:g}% precision on {n} calibration rows** (at δ = {delta:g} "
            f"that takes at least {cert.get('error_free_rows_needed')} accepted rows, all of them right).")
    for lower in sorted((x for x in targets if x < target), reverse=True):
        kl = deploy.key(lower)
        ok = [s for s in evals if evals[s].get(f"threshold_at_{kl}") is not None and not sel[s].floor]
        if ok:
            s = best(ok, vals, kl)
            return line + f" At {100 * lower:g}%: {certified_phrase(s, sel, evals[s], kl)}."
    return line + " Nor at any lower target."


def answer(sel: dict, evals: dict, vals: dict, comparisons: dict, targets: list[float], params: dict) -> list[str]:
    """The Answer: the headline, the primary comparisons (Holm within them), the cost with review, the tally."""
    target = max(targets)
    k = deploy.key(target)
    a, b, note = headline_pair(sel, evals, vals, target)
    out = []
    if not (a and b):
        return ["- No fine-tuned system was evaluated." if not a else "- No prompted system was evaluated beside the "
                "fine-tuned ones."]
    ma, mb = evals[a], evals[b]
    out.append(headline(a, b, sel, evals, vals, targets, note))
    c = comparisons.get((a, b))
    if c and "unpaired" not in c:
        line = (f"- `{a}` against `{b}`: exact match {_pct(ma['exact_match'])}% against {_pct(mb['exact_match'])}%: "
                f"{_difference(c, 'exact match')}.")
        if c["coverage"] is not None:
            line += f" Coverage: {_difference(c['coverage'], 'coverage')}."
        out.append(line)
    elif c:
        out.append("- " + unpaired_line(c))
    review = params.get("deploy", {}).get("review_usd_per_chart")
    out.append(f"- **With a coder reviewing every encounter not coded automatically** ({_usd(review)} a chart), 1,000 "
               f"encounters cost {_usd(ma.get('usd_per_1k_with_review'))} with `{a}` and "
               f"{_usd(mb.get('usd_per_1k_with_review'))} with `{b}`, against {_usd(1000 * review if review else None)} "
               f"reviewing all; inference alone is {_usd(ma.get('usd_per_1k'))} and {_usd(mb.get('usd_per_1k'))}"
               + (" (CPU time on this run, not a GPU host's price)" if "cpu" in (ma.get("cost_device"), mb.get("cost_device"))
                  else "") + ".")
    out.append(f"- Both systems were chosen on validation, the thresholds certified on calibration rows no choice "
               "read; the test split is read once, here.")
    for s in (x for x in sel.values() if x.id in evals and x.adds):
        c = comparisons.get((s.id, s.adds[0]))
        if c is None:
            continue
        if "unpaired" in c:
            out.append(f"- {s.adds[1]}: " + unpaired_line(c))
            continue
        cov = (f"; {_difference(c['coverage'], f'coverage at {100 * target:g}% precision')}" if c["coverage"] is not None
               else f"; no coverage test ({', '.join(c['not_certified'])} not certified at {100 * target:g}%)")
        out.append(f"- **{s.adds[1]}** (`{s.id}` vs `{s.adds[0]}`): {_difference(c, 'exact match')}{cov}.")
    tested = [x for c in comparisons.values() if c.get("family") == "primary" and "unpaired" not in c
              for x in (c, c["coverage"]) if x is not None]
    if tested:
        out.append(f"- {sum(x['significant'] for x in tested)} of {len(tested)} primary tests are significant after "
                   "Holm's correction within the primary family (declared in params `comparisons`); every other pair "
                   "is exploratory ([Paired comparisons](#paired-comparisons)).")
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
    head = " | ".join(f"threshold @{100 * t:g} (accepted / errors on calibration, p) | coverage @{100 * t:g} % (95% CI) "
                      f"| precision @{100 * t:g} % (95% CI)" for t in targets)
    top = deploy.key(max(targets))
    out = ["## Coded without review", "",
           f"| system | signal | {head} | AURC | $ per 1,000 | $ per 1,000 with review @{100 * max(targets):g} |",
           "|---|---|" + "---|---|---|" * len(targets) + "---:|---:|---:|"]
    for s in systems_:
        m = evals[s]
        cells = []
        for t in targets:
            k = deploy.key(t)
            cert, th = m.get(f"certified_at_{k}") or {}, m.get(f"threshold_at_{k}")
            clo, chi = m.get(f"coverage_at_{k}_ci95") or (None, None)
            plo, phi = m.get(f"precision_ci_at_{k}") or (None, None)
            cells += ["none certified" if th is None else
                      f"{th:.4g} ({cert.get('accepted')} / {cert.get('errors')}, p = {_p(cert.get('p_value'))})",
                      "none" if m.get(f"coverage_at_{k}") is None else f"{_pct(m[f'coverage_at_{k}'])} ({_pct(clo)}–{_pct(chi)})",
                      "—" if m.get(f"precision_at_{k}") is None else
                      f"{_pct(m[f'precision_at_{k}'])} ({_pct(plo)}–{_pct(phi)})"]
        out.append(f"| {s} | {m.get('confidence_signal')} | {' | '.join(cells)} | {_num(m.get('aurc'))} "
                   f"| {_usd(m.get('usd_per_1k'))} | {_usd(m.get(f'usd_per_1k_with_review_at_{top}'))} |")
    dep = params.get("deploy", {})
    any_cert = next((evals[s].get(f"certified_at_{top}") for s in systems_ if evals[s].get(f"certified_at_{top}")), {})
    out += ["", "A system codes an encounter without review when its confidence reaches the threshold for the target "
            "precision. The confidence signal (top-1 probability, its margin over the second, or agreement with the "
            "TF-IDF retriever's first code, then probability) was chosen on the validation split (the smallest "
            "risk-coverage area). Each threshold was certified on the calibration split, rows no choice read, by "
            f"Learn-then-Test (fixed-sequence testing from the highest threshold down, δ = {dep.get('delta')}): "
            "with probability at least 1 − δ the encounters coded are at least that precise, for encounters like the "
            "calibration rows. Its p-value is the exact binomial tail P(X ≤ errors), X ~ Bin(accepted, 1 − target), "
            f"over the {any_cert.get('calibration_rows')} calibration rows; {100 * max(targets):g}% needs at least "
            f"{any_cert.get('error_free_rows_needed')} accepted rows, all right. Coverage and precision above are what "
            "the test split showed at that very threshold (Wilson 95% CIs). AURC: area under the test risk-coverage "
            f"curve (lower is better). Cost: measured throughput priced at {_usd(dep.get('usd_per_hour'))} per GPU hour "
            f"or {_usd(dep.get('cpu_usd_per_hour'))} per CPU hour ({dep.get('price_source', 'params deploy')}); with "
            f"review: plus {_usd(dep.get('review_usd_per_chart'))} for each encounter a coder reviews (params "
            "`deploy.review_usd_per_chart`).", ""]
    missing = [(s, t) for s in systems_ for t in targets if evals[s].get(f"threshold_at_{deploy.key(t)}_reason")]
    for s, t in missing:
        out.append(f"- `{s}` at {100 * t:g}%: {evals[s][f'threshold_at_{deploy.key(t)}_reason']}.")
    return out + ([""] if missing else [])


def validation_section(trains: dict, vals: dict, evals: dict, systems_: list[str], target: float) -> list[str]:
    t = f"{100 * target:g}"
    out = ["## Chosen on validation", "",
           "The test split was read once, here. Every choice was made on validation: the checkpoint each training run "
           "kept, each system's confidence signal, and the systems that lead the answer; each threshold was certified "
           "on the calibration rows, which no choice read.", "",
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
           f"| family | A | B | n | exact A − B (points) | 95% CI | McNemar p | Holm p | coverage @{t} A − B (points) "
           "| 95% CI | McNemar p | Holm p | $ per 1,000 with review A / B | throughput A/B | memory B/A "
           "| seeds in the same direction |",
           "|---|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|---|---:|---:|---|"]

    def cells(x):
        lo, hi = x["ci95"]
        mark = "**" if x["significant"] else ""
        return (f"{mark}{100 * x['diff']:+.1f}{mark} | {100 * lo:+.1f} to {100 * hi:+.1f} | {_p(x['mcnemar']['p_value'])} "
                f"| {mark}{_p(x['p_holm'])}{mark}")

    for c in sorted(done, key=lambda c: c["family"] != "primary"):
        seeds = c.get("seeds")
        held = f"{seeds['same_direction']} of {seeds['seeds']}" if seeds else "—"
        cov = cells(c["coverage"]) if c["coverage"] is not None else \
            f"no test: {', '.join(c['not_certified'])} not certified | | | "
        ra, rb = c.get("with_review") or (None, None)
        out.append(f"| {c['family']} | {c['a']} | {c['b']} | {c['n']} | {cells(c)} | {cov} | {_usd(ra)} / {_usd(rb)} "
                   f"| {c['speed_ratio'] or 0:.2g} | {c['memory_ratio'] or 0:.2g} | {held} |")
    primary = [c for c in done if c["family"] == "primary"]
    n_primary = sum(1 + (c["coverage"] is not None) for c in primary)
    out += ["", "Primary: the comparisons params `comparisons.primary` declares before any result (the best fine-tuned "
            "system against the best large prompted one, both chosen on validation, and each system against the one "
            "its entry `adds` to); exploratory: every other fine-tuned system against every untrained one. Holm p is "
            f"adjusted within each family ({n_primary} primary tests, "
            f"{sum(1 + (c['coverage'] is not None) for c in done) - n_primary} exploratory); bold = significant after "
            "that adjustment (Holm p < 0.05). CI: paired bootstrap over test rows (5,000 resamples, seed 42). McNemar: "
            f"exact binomial test on the rows where exactly one of the two is right (exact) or coded without review at "
            f"{t}% precision (coverage). Coverage is compared only between two systems certified at {t}%: a looser, "
            "uncertified rule would otherwise win; the others are compared by what 1,000 encounters cost with the "
            "review of those not coded.", ""]
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
    adjust(comparisons, primary_pairs(sel, vals, evals, target, params))
    out = ["# Can a fine-tuned small model code ICD-10-CM better than zero-shot larger models?", ""]
    if params.get("smoke"):
        out += [SMOKE_BANNER, ""]
    out += ["## Answer", ""] + answer(sel, evals, vals, comparisons, targets, params)
    out += [f"- {unpaired_line(c)}" for c in comparisons.values() if "unpaired" in c]
    if str(params.get("data", {}).get("source")) == "demo":
        out += ["", f"> {DEMO_CAVEAT}"]
    k = deploy.key(target)
    out += ["", "## All systems", "",
            f"| system | parameters | exact % (95% CI) | category % | chapter % | valid % | macro-F1 | top-3 % | top-5 % | ECE "
            + "".join(f"| coverage @{100 * x:g} % " for x in targets)
            + "| $ per 1,000 | $ per 1,000 with review | latency p50 s | samples/s | peak memory MB |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(targets) + "---:|---:|---:|---:|---:|"]
    for s in ordered:
        m = evals[s]
        lo, hi = m["exact_match_ci95"]
        out.append(f"| {s} | {m.get('params_total', 0) / 1e6:,.1f}M | {_pct(m['exact_match'])} ({_pct(lo)}–{_pct(hi)}) "
                   f"| {_pct(m['category_match'])} | {_pct(m['chapter_match'])} | {_pct(m['valid_rate'])} "
                   f"| {m['macro_f1']:.3f} | {_pct(m.get('top3_match'))} | {_pct(m.get('top5_match'))} "
                   f"| {_num(m.get('ece'))} | {' | '.join(_coverage(m, deploy.key(x)) for x in targets)} "
                   f"| {_usd(m.get('usd_per_1k'))} "
                   f"| {_usd(m.get('usd_per_1k_with_review'))} | {m.get('latency_p50_s') or 0:.3f} | {m.get('samples_per_s') or 0:.2f} | {m.get('peak_mem_mb') or 0:,.0f} |")
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
            f"- {data['n_codes']} codes; train / val / calibration / test = {data['train']} / {data['val']} / "
            f"{data.get('calibration', 0)} / {data['test']} (split per code, seed {params.get('split', {}).get('seed')}).",
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
