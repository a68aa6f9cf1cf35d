"""The study report: the answer first, in a coding team's terms, then the evidence. Pure Python + numpy/scipy.

This module renders; what it shows is decided elsewhere. The systems that lead the answer are chosen on validation
alone (icdstudy.analysis.selection), the paired tests and their Holm correction within the primary and the
exploratory family are icdstudy.analysis.comparisons, the thresholds and costs icdstudy.analysis.thresholds. Test
numbers are what it reports; it is the one place that reads them.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

from icdstudy import icd10, systems
from icdstudy.analysis import selection, thresholds
from icdstudy.analysis.comparisons import PairingError, adjust, compare, pairs
from icdstudy.analysis.errors import ERROR_KINDS, error_breakdown, error_kind
from icdstudy.reporting.answer import answer, demo_caveat, unpaired_line
from icdstudy.reporting.formats import coverage, num, p, pct, usd

SMOKE_BANNER = ("> **SMOKE RUN: these numbers mean nothing.** `study full-study --smoke` ran every stage of the study at "
                "the smallest sizes that exercise it (a few dozen test rows, a few optimizer steps) to show that downloads, "
                "chat templates, training, evaluation and this report work before the GPU hours are spent. Run "
                "`python -m icdstudy.study full-study` for the study's numbers.")
__all__ = ["PairingError", "render"]


# What the report says of each prompt style that shows something retrieved ({k}: the system's `retrieved`).
STYLE_NOTES = {
    "examples": "- Few-shot systems: each input follows its {k} nearest training examples (TF-IDF cosine, 1–{ngram_max}-"
                "grams; never the row itself or a copy of its text), each cut to {max_shot_tokens} tokens, the nearest last.",
    "shortlist": "- Shortlist systems: each prompt lists the {k} codes the same retriever ranks highest (knn-tfidf's vote "
                  "over the {neighbours} nearest training inputs, then the codes of the next nearest), best first, each "
                  "with its official description and vote share; decoding still covers every label. A training row's "
                  "list comes from the other training rows, as a test row's does.",
}


def _fewshot_settings(evals: dict, sel: dict, params: dict) -> list[str]:
    """One line per prompt style that shows something retrieved, as the report's systems use it."""
    e, r = params.get("decoding", {}), params.get("retrieval", {})
    shown = {sel[s].prompt: sel[s].retrieved for s in evals if s in sel and sel[s].prompt}
    return [STYLE_NOTES[name].format(k=k, ngram_max=r.get("ngram_max"), neighbours=r.get("neighbours"),
                                     max_shot_tokens=e.get("max_shot_tokens") or e.get("max_input_tokens"))
            for name, k in shown.items() if name in STYLE_NOTES]


def _hardware(evals: dict) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    devices = sorted({m.get("device", "?") for m in evals.values()})
    kernels = sorted({m["cpu_kernels"] for m in evals.values() if m.get("device") == "cpu" and m.get("cpu_kernels")})
    return (f"models ran on {' and '.join(devices)}" + (f" (CPU kernels {', '.join(kernels)})" if kernels else "")
            + f"; host CPU {cpu} ({os.cpu_count()} cores), {platform.system()} {platform.release()}")


def seed_table(evals: dict) -> list[str]:
    """Mean, SD and range of exact match over training seeds, for models trained with several."""
    rows = [(s, m["seeds"]) for s, m in sorted(evals.items()) if len((m.get("seeds") or {}).get("seeds", [])) > 1]
    if not rows:
        return []
    out = ["## Training seeds", "", "| system | seeds | exact % by seed | mean % | SD (points) | range % |",
           "|---|---|---|---:|---:|---|"]
    for s, sd in rows:
        by = ", ".join(f"{k}: {pct(v)}" for k, v in sd["exact_match_by_seed"].items())
        out.append(f"| {s} | {len(sd['seeds'])} | {by} | {pct(sd['exact_match_mean'])} | {pct(sd['exact_match_sd'])} "
                   f"| {pct(sd['exact_match_min'])}–{pct(sd['exact_match_max'])} |")
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
        out.append(f"| {s} | {m.get('candidates')} | {pct(m.get('candidate_recall'))} | {pct(m['exact_match'])} "
                   f"| {pct(m.get('picked_first_candidate'))} | {pct(m.get('picked_other_candidate'))} "
                   f"| {pct(m.get('picked_off_list'))} |")
    out += ["", "Candidate recall is the share of test rows whose gold code is on the list: the most a system that only "
            "picks from it can reach. The retriever's first candidate is knn-tfidf's answer.", ""]
    return out


def deployment_section(evals: dict, vals: dict, systems_: list[str], targets: list[float], params: dict) -> list[str]:
    head = " | ".join(f"threshold @{100 * t:g} (accepted / errors on calibration, p) | coverage @{100 * t:g} % (95% CI) "
                      f"| precision @{100 * t:g} % (95% CI)" for t in targets)
    top = thresholds.key(max(targets))
    out = ["## Coded without review", "",
           f"| system | signal | {head} | AURC | $ per 1,000 | $ per 1,000 with review @{100 * max(targets):g} |",
           "|---|---|" + "---|---|---|" * len(targets) + "---:|---:|---:|"]
    for s in systems_:
        m = evals[s]
        cells = []
        for t in targets:
            k = thresholds.key(t)
            cert, th = m.get(f"certified_at_{k}") or {}, m.get(f"threshold_at_{k}")
            clo, chi = m.get(f"coverage_at_{k}_ci95") or (None, None)
            plo, phi = m.get(f"precision_ci_at_{k}") or (None, None)
            counts = f"{cert.get('accepted')} / {cert.get('errors')}, p = {p(cert.get('p_value'))}"
            cells += [f"none certified (first test {counts})" if th is None else f"{th:.4g} ({counts})",
                      "none" if m.get(f"coverage_at_{k}") is None else f"{pct(m[f'coverage_at_{k}'])} ({pct(clo)}–{pct(chi)})",
                      "—" if m.get(f"precision_at_{k}") is None else
                      f"{pct(m[f'precision_at_{k}'])} ({pct(plo)}–{pct(phi)})"]
        out.append(f"| {s} | {m.get('confidence_signal')} | {' | '.join(cells)} | {num(m.get('aurc'))} "
                   f"| {usd(m.get('usd_per_1k'))} | {usd(m.get(f'usd_per_1k_with_review_at_{top}'))} |")
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
            f"curve (lower is better). Cost: measured throughput priced at {usd(dep.get('usd_per_hour'))} per GPU hour "
            f"or {usd(dep.get('cpu_usd_per_hour'))} per CPU hour ({dep.get('price_source', 'params deploy')}); with "
            f"review: plus {usd(dep.get('review_usd_per_chart'))} for each encounter a coder reviews (params "
            "`deploy.review_usd_per_chart`).", ""]
    missing = [(s, t) for s in systems_ for t in targets if evals[s].get(f"threshold_at_{thresholds.key(t)}_reason")]
    for s, t in missing:
        out.append(f"- `{s}` at {100 * t:g}%: {evals[s][f'threshold_at_{thresholds.key(t)}_reason']}.")
    return out + ([""] if missing else [])


def validation_section(trains: dict, vals: dict, evals: dict, systems_: list[str], target: float, sel: dict) -> list[str]:
    t, k = f"{100 * target:g}", thresholds.key(target)
    a, b, _ = selection.headline_pair(sel, {s: vals[s] for s in systems_ if s in vals}, target)
    floor = selection.best_floor(sel, {s: vals[s] for s in systems_ if s in vals}, target)
    leaders = ", ".join(f"{role} `{s}`" for s, role in ((a, "fine-tuned"), (b, "large prompted"), (floor, "floor")) if s)
    out = ["## Chosen on validation", "",
           "The test split was read once, here. Every choice was made on validation: the checkpoint each training run "
           "kept, each system's confidence signal, and the systems that lead the answer (" + leaders + "), ranked by "
           f"the share of validation rows a threshold fitted on validation codes at {t}% precision, then validation "
           "exact match. Each threshold was certified on the calibration rows, which no choice read.", "",
           f"| system | exact % val | coverage @{t} % val, threshold fitted on val | exact % test "
           f"| coverage @{t} % test |", "|---|---:|---:|---:|---:|"]
    for s in systems_:
        v, m = vals.get(s) or {}, evals[s]
        out.append(f"| {s} | {pct(v.get('exact_match'))} | {pct(v.get(f'val_fitted_coverage_at_{k}'))} "
                   f"| {pct(m['exact_match'])} | {coverage(m, k)} |")
    if trains:
        out += ["", "| training run | checkpoint kept by | kept step | of steps | validation exact % at that step "
                "| validation loss there |", "|---|---|---:|---:|---:|---:|"]
        for run, tr in sorted(trains.items()):
            out.append(f"| {run} | {tr.get('select_by', 'loss')} | {tr.get('best_step', 'n/a')} | {tr['steps']} "
                       f"| {pct(tr.get('best_val_exact_match'))} | {tr['eval_loss']} |")
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
        out.append(f"| {s} | {pct(sum(hit) / len(hit)) if hit else 'n/a'} | {pct(sum(rest) / len(rest)) if rest else 'n/a'} |")
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
           f"| family | A | B | n | exact A − B (points) | CI at Holm's step | McNemar p | Holm p | coverage @{t} A − B "
           "(points) | CI at Holm's step | McNemar p | Holm p | $ per 1,000 with review A / B | throughput A/B | memory B/A "
           "| seeds in the same direction |",
           "|---|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|---|---:|---:|---|"]

    def cells(x):
        lo, hi = x["ci_adjusted"]
        mark = "**" if x["significant"] else ""
        return (f"{mark}{100 * x['diff']:+.1f}{mark} | {100 * lo:+.1f} to {100 * hi:+.1f} ({100 * x['ci_level']:.3g}%) "
                f"| {p(x['mcnemar']['p_value'])} | {mark}{p(x['p_holm'])}{mark}")

    for c in sorted(done, key=lambda c: c["family"] != "primary"):
        seeds = c.get("seeds")
        held = f"{seeds['same_direction']} of {seeds['seeds']}" if seeds else "—"
        cov = cells(c["coverage"]) if c["coverage"] is not None else \
            f"no test: {', '.join(c['not_certified'])} not certified | | | "
        ra, rb = c.get("with_review") or (None, None)
        out.append(f"| {c['family']} | {c['a']} | {c['b']} | {c['n']} | {cells(c)} | {cov} | {usd(ra)} / {usd(rb)} "
                   f"| {c['speed_ratio'] or 0:.2g} | {c['memory_ratio'] or 0:.2g} | {held} |")
    n_primary = sum(c["family"] == "primary" for c in done)
    out += ["", "Primary: the comparisons params `comparisons.primary` declares before any result (the best fine-tuned "
            "system against the best large prompted one and against the best floor, all chosen on validation alone, and "
            "each system against the one its entry `adds` to), their exact-match tests; exploratory: every other fine-tuned "
            "system against every untrained one, and every coverage test (one exists only where the calibration rows "
            f"certified both systems, so it stays out of the primary family). Holm p is adjusted within each family "
            f"({n_primary} primary tests, "
            f"{sum(1 + (c['coverage'] is not None) for c in done) - n_primary} exploratory); bold = significant after "
            "that adjustment (Holm p < 0.05). CI: paired bootstrap over test rows (5,000 resamples, seed 42), read at "
            "the test's Holm step (level 1 − 0.05 / the tests still in play there, as its adjusted p is judged), so it "
            "is adjusted as the p-value beside it is. McNemar: "
            f"exact binomial test on the rows where exactly one of the two is right (exact) or coded without review at "
            f"{t}% precision (coverage). Coverage is compared only between two systems certified at {t}%: a looser, "
            "uncertified rule would otherwise win; the others are compared by what 1,000 encounters cost with the "
            "review of those not coded.", ""]
    return out


def all_systems_table(evals: dict, ordered: list[str], targets: list[float]) -> list[str]:
    out = ["", "## All systems", "",
           "| system | parameters | exact % (95% CI) | category % | chapter % | valid % | macro-F1 | top-3 % | top-5 % | ECE "
           + "".join(f"| coverage @{100 * x:g} % " for x in targets)
           + "| $ per 1,000 | $ per 1,000 with review | latency p50 s | samples/s | peak memory MB |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(targets) + "---:|---:|---:|---:|---:|"]
    for s in ordered:
        m = evals[s]
        lo, hi = m["exact_match_ci95"]
        out.append(f"| {s} | {m.get('params_total', 0) / 1e6:,.1f}M | {pct(m['exact_match'])} ({pct(lo)}–{pct(hi)}) "
                   f"| {pct(m['category_match'])} | {pct(m['chapter_match'])} | {pct(m['valid_rate'])} "
                   f"| {m['macro_f1']:.3f} | {pct(m.get('top3_match'))} | {pct(m.get('top5_match'))} "
                   f"| {num(m.get('ece'))} | {' | '.join(coverage(m, thresholds.key(x)) for x in targets)} "
                   f"| {usd(m.get('usd_per_1k'))} "
                   f"| {usd(m.get('usd_per_1k_with_review'))} | {m.get('latency_p50_s') or 0:.3f} | {m.get('samples_per_s') or 0:.2f} | {m.get('peak_mem_mb') or 0:,.0f} |")
    return out + ["", "Test split. Exact: the whole code; category: its first 3 characters; chapter: its ICD-10-CM chapter. "
                  "Top-k and ECE only for systems that rank candidates with scores. Latency is per sample within batches, "
                  "generation only (model loading excluded); memory is peak process RSS on CPU or peak allocated CUDA "
                  "memory.", ""]


def render(evals: dict, preds: dict, trains: dict, data: dict, params: dict,
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
    declared = (params.get("comparisons") or {}).get("primary") or []
    adjust(comparisons, selection.primary_pairs(sel, {s: vals[s] for s in ordered if s in vals}, target, declared))
    out = ["# Can a fine-tuned small model code ICD-10-CM better than zero-shot larger models?", ""]
    if params.get("smoke"):
        out += [SMOKE_BANNER, ""]
    out += ["## Answer", ""] + answer(sel, evals, vals, comparisons, targets, params)
    out += [f"- {unpaired_line(c)}" for c in comparisons.values() if "unpaired" in c]
    if str(params.get("data", {}).get("source")) == "demo":
        out += ["", f"> {demo_caveat(sel, comparisons)}"]
    out += all_systems_table(evals, ordered, targets)
    out += deployment_section(evals, vals, ordered, targets, params)
    out += validation_section(trains, vals, evals, ordered, target, sel)
    out += shortlist_section(evals, ordered)
    out += paired_table(list(comparisons.values()), target)
    scored = [s for s in ordered if s in preds]
    if scored:
        out += error_section(error_breakdown({s: preds[s] for s in scored}), preds, inputs or {}, scored, sel)
    out += near_copy_section(near, preds, scored)
    out += seed_table(evals)
    if trains:
        out += ["## Training", "", "| run | trainable params | steps | epochs | mean train loss | loss spike "
                "| val loss at the kept step | tokens/s | peak memory MB | wall s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for run, t in sorted(trains.items()):
            spike = t.get("loss_spike")
            out.append(f"| {run} | {t['trainable_params']:,} | {t['steps']} | {t['epochs']} | {t['train_loss']} "
                       f"| {'n/a' if spike is None else f'{spike:.2f}'} | {t['eval_loss']} | {t['train_tokens_per_s']} "
                       f"| {t.get('peak_mem_mb', 0):,.0f} | {t['wall_s']} |")
        out += ["", "Loss spike: the largest logged training loss after warmup over the lowest logged before it (above 2: "
                "the run diverged for a while).", ""]
    d, e = params.get("data", {}), params.get("decoding", {})
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
            f"- Decoding: constrained to the label set = {e.get('constrained')}, top-k {e.get('top_k')}.",
            *_fewshot_settings(evals, sel, params),
            _split_line(evals),
            *([f"- Base models: {_provenance(bases)}."] if bases else []),
            f"- Hardware: {_hardware(evals)}.", ""]
    return "\n".join(out)


def with_plots(text: str, plots: list[str]) -> str:
    """The report with its figures (paths relative to it) at the end."""
    if not plots:
        return text
    return "\n".join([text, "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""])


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
