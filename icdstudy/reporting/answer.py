"""The report's Answer: what the systems chosen on validation code without review at each target precision, where
the fine-tuned one stands against the best large prompted system and the best floor, the cost with review, what
each added change does, and the demo's note, which claims no more than the numbers show.
"""
from __future__ import annotations

from icdstudy.analysis import selection, thresholds
from icdstudy.reporting import names
from icdstudy.reporting.formats import p, pct, usd


def difference(t: dict, unit: str) -> str:
    """A paired difference with the CI read at its Holm step (what its adjusted p-value is judged at)."""
    lo, hi = (100 * x for x in t["ci_adjusted"])
    return (f"{100 * t['diff']:+.1f} points of {unit} ({100 * t['ci_level']:.3g}% CI at its Holm step {lo:+.1f} to "
            f"{hi:+.1f}; McNemar p = {p(t['mcnemar']['p_value'])}, Holm-adjusted {p(t['p_holm'])}: "
            f"{'significant' if t['significant'] else 'not significant'})")


def unpaired_line(c: dict) -> str:
    fa, fb = c["unpaired"]
    return (f"`{c['a']}` and `{c['b']}` were scored on different test splits (split fingerprints "
            f"`{fa or 'none recorded'}` and `{fb or 'none recorded'}`): not compared. Rerun both on the same data.")


def certified_phrase(s: str, sel: dict, m: dict, k: str, role: str = "") -> str:
    """What ``s`` does on test at the threshold certified for target ``k``: coverage and the precision reached; or,
    not certified, the counts of the test that failed, which anyone can check."""
    name = f"`{s}` ({names.label(sel[s])}){role}"
    cert = m.get(f"certified_at_{k}") or {}
    if m.get(f"threshold_at_{k}") is None:
        return (f"{name} is not certified (its first test accepts {cert.get('accepted')} calibration rows with "
                f"{cert.get('errors')} errors, p = {p(cert.get('p_value'))} > δ): every encounter goes to review")
    cov, (clo, chi) = m.get(f"coverage_at_{k}"), m.get(f"coverage_at_{k}_ci95") or (None, None)
    if not cov:
        return f"{name} codes no test encounter without review (none reached its certified threshold)"
    plo, phi = m.get(f"precision_ci_at_{k}") or (None, None)
    return (f"{name} codes {pct(cov)}% of test encounters without review (95% CI {pct(clo)}–{pct(chi)}) at "
            f"{pct(m.get(f'precision_at_{k}'))}% precision on test (95% CI {pct(plo)}–{pct(phi)})")


def deployment_lines(leaders: list[tuple[str, str]], sel: dict, evals: dict, targets: list[float]) -> list[str]:
    """One line per target precision, highest first: what each leading system (chosen on validation) codes without
    review at the threshold certified for it, or the failed test that refused it (each role said once)."""
    out = []
    for i, target in enumerate(sorted(targets, reverse=True)):
        k = thresholds.key(target)
        cert = next((evals[s].get(f"certified_at_{k}") for s, _ in leaders if evals[s].get(f"certified_at_{k}")), {})
        phrases = "; ".join(certified_phrase(s, sel, evals[s], k, role if i == 0 else "") for s, role in leaders)
        out.append(f"- **At {100 * target:g}% precision** (certified with δ = {cert.get('delta')} on "
                   f"{cert.get('calibration_rows')} calibration rows): {phrases}.")
    return out


def review_costs(leaders: list[tuple[str, str]], evals: dict, targets: list[float]) -> str:
    """Each leader's cost of 1,000 encounters with a coder reviewing those it does not code, at the highest target
    where it is certified (else every encounter is reviewed)."""
    parts = []
    for s, _ in leaders:
        coded = next((t for t in sorted(targets, reverse=True) if evals[s].get(f"threshold_at_{thresholds.key(t)}") is not None), None)
        if coded is None:
            parts.append(f"{usd(evals[s].get('usd_per_1k_with_review'))} with `{s}` (nothing certified: all reviewed)")
        else:
            k = thresholds.key(coded)
            parts.append(f"{usd(evals[s].get(f'usd_per_1k_with_review_at_{k}'))} with `{s}` (coding "
                         f"{pct(evals[s].get(f'coverage_at_{k}'))}% at its {100 * coded:g}% threshold)")
    return ", ".join(parts)


def comparison_line(c: dict | None, what: str, evals: dict) -> list[str]:
    if c is None:
        return []
    if "unpaired" in c:
        return [f"- {what}: " + unpaired_line(c)]
    a, b = c["a"], c["b"]
    line = (f"- {what}: `{a}` against `{b}`, exact match {pct(evals[a]['exact_match'])}% against "
            f"{pct(evals[b]['exact_match'])}%: {difference(c, 'exact match')}.")
    return [line + (f" Coverage (exploratory family): {difference(c['coverage'], 'coverage')}."
                     if c["coverage"] is not None else "")]


def answer(sel: dict, evals: dict, vals: dict, comparisons: dict, targets: list[float], params: dict) -> list[str]:
    """The Answer: what the leading systems code without review, where the fine-tuned one stands against the best
    large prompted system and the best floor, the cost with review, what each added change does, the tally. The
    leaders are chosen on validation alone (icdstudy.analysis.selection)."""
    target = max(targets)
    a, b, note = selection.headline_pair(sel, vals, target)
    floor = selection.best_floor(sel, vals, target)
    if not (a and b):
        return ["- No fine-tuned system was evaluated." if not a else "- No prompted system was evaluated beside the "
                "fine-tuned ones."]
    leaders = [(a, ""), (b, f", the best large system{note},")] + ([(floor, ", the best floor,")] if floor else [])
    out = deployment_lines(leaders, sel, evals, targets)
    out += comparison_line(comparisons.get((a, b)), "Against the best large prompted system", evals)
    if floor:
        out += comparison_line(comparisons.get((a, floor)), "Against the best floor", evals)
    review = params.get("deploy", {}).get("review_usd_per_chart")
    inference = ", ".join(usd(evals[s].get("usd_per_1k")) for s, _ in leaders)
    on_cpu = any(evals[s].get("cost_device") == "cpu" for s, _ in leaders)
    out.append(f"- **With a coder reviewing every encounter not coded automatically** ({usd(review)} a chart), 1,000 "
               f"encounters cost {review_costs(leaders, evals, targets)}, against "
               f"{usd(1000 * review if review else None)} reviewing all; inference alone is {inference}"
               + (" (CPU time on this run, not a GPU host's price)" if on_cpu else "") + ".")
    out.append("- These systems were chosen on validation alone; the thresholds were certified on calibration rows "
               "no choice read; the test split is read once, here.")
    for s in (x for x in sel.values() if x.id in evals and x.adds):
        out += comparison_line(comparisons.get((s.id, s.adds[0])), f"**{s.adds[1]}**", evals)
    tested = [c for c in comparisons.values() if c.get("family") == "primary" and "unpaired" not in c]
    if tested:
        out.append(f"- {sum(x['significant'] for x in tested)} of {len(tested)} primary tests are significant after "
                   "Holm's correction within the primary family (declared in params `comparisons`); every other pair "
                   "is exploratory ([Paired comparisons](#paired-comparisons)).")
    return out


def demo_caveat(sel: dict, comparisons: dict) -> str:
    """What the demo shows, claiming learning only where fine-tuning beat its untrained same-prompt system
    significantly (within the primary family)."""
    tuned = [c for (a, b), c in comparisons.items() if "unpaired" not in c and sel[a].fine_tuned
             and not sel[b].fine_tuned and not sel[b].floor and (sel[a].model, sel[a].prompt) == (sel[b].model, sel[b].prompt)]
    learned = [c for c in tuned if c["significant"] and c["diff"] > 0]
    if learned:
        shows = ("that the pipeline runs end to end and that fine-tuning learns on it (" + ", ".join(
            f"`{c['a']}` over `{c['b']}`: {100 * c['diff']:+.1f} points, significant after Holm" for c in learned) + ")")
    else:
        shows = ("that the pipeline runs end to end; fine-tuning is not shown to help here (" + ("; ".join(
            f"`{c['a']}` over `{c['b']}`: {100 * c['diff']:+.1f} points, not significant after Holm" for c in tuned)
            or "no fine-tuned system beside its untrained twin") + ")")
    return ("These numbers come from the **synthetic demo data** (codes in groups of siblings that share a category, "
            f"5 to 7 generated encounters each) and the 135M embedded model. They show {shows}; they say nothing of how "
            "well anything codes real encounters. Run the full study for real numbers.")
