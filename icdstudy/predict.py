"""Ranked ICD-10-CM suggestions for new encounters.

    python -m icdstudy.predict --text "<dialogue or note>"          one encounter (or --file F, or stdin)
    python -m icdstudy.predict --input batch.csv --output out.jsonl  a batch (column `input`, `dialogue` or `note`)

Decodes each encounter as the system's predict@ stage decodes a row (the same prompt style, settings and
Decoding; params `decoding` with the system's own keys). Scores are probabilities under the model restricted
to the candidate codes (they sum to at most 1). Each encounter is routed: `code` where the system's confidence
reaches the threshold certified on the calibration rows for the target precision (--target, default the
highest of deploy.target_precision; stage `score` records it in metrics/val/<system>.json), else `review`; the
output says which threshold, from which system and with what validation precision. With --min-confidence p, a
result whose top score is below p is marked abstained.
Suggestions support, and do not replace, a qualified medical coder.
"""
# pandas is imported where used: only a batch file (--input) needs it.
from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from icdstudy import icd10, systems
from icdstudy.analysis import thresholds
from icdstudy.core.io import read_json, read_jsonl, write_text_atomic
from icdstudy.core.params import ParamError, load_params, model_entry
from icdstudy.inference.evaluation import Decoding
from icdstudy.inference.prompt_styles import generation_settings, prompt_rows, style
from icdstudy.models.modeling import ModelError, load_for_inference
from icdstudy.neighbours.shortlist import SHORTLIST, with_shortlists

DISCLAIMER = "Suggestions support, and do not replace, a qualified medical coder."
DEFAULT_MODEL = "smollm2-135m"


class PredictError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m icdstudy.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="the encounter text")
    src.add_argument("--file", help="a text file holding one encounter")
    src.add_argument("--input", help="a batch: .csv or .jsonl with a column input, dialogue or note")
    p.add_argument("--output", help="batch output .jsonl (default: standard output)")
    p.add_argument("--system", help="a system of params.yaml's systems.llm: its model, adapter, prompt and threshold "
                   "(default: the table's first fine-tuned system on --model whose adapter exists, else its first "
                   "untrained one with the prompt asked for)")
    p.add_argument("--model", default=None, help=f"a registry key in params.yaml or a model folder (default: {DEFAULT_MODEL})")
    p.add_argument("--adapter", help="a LoRA adapter folder (default: the chosen system's, models/adapters/<run>)")
    p.add_argument("--no-adapter", action="store_true", help="use the base model even if an adapter exists")
    p.add_argument("--shortlist", action="store_true", help="list, in the prompt, the codes the TF-IDF retriever over "
                   "the training split ranks highest, as the shortlist systems do (as many as the system's `retrieved`)")
    p.add_argument("--target", type=float, help="route at this precision: code where the confidence reaches the "
                   "threshold certified for it on the calibration rows, else review (default: the highest deploy.target_precision)")
    p.add_argument("--metrics", default="metrics/val", help="where stage score wrote each system's validation metrics "
                   "(thresholds)")
    p.add_argument("--top-k", type=int, default=None, help="candidates to return (default: the system's own top-k, "
                   "params decoding.top_k or its `decoding`; a wider one is not what its thresholds were certified on)")
    p.add_argument("--labels", default="train", help="candidate codes: train (the training label set, default), "
                   "all (every billable ICD-10-CM code; slower), or a labels.json / text file of codes")
    p.add_argument("--min-confidence", type=float, default=0.0, help="abstain when the top score is below this")
    p.add_argument("--input-kind", choices=["dialogue", "note"], default=None, help="default: data.input in params.yaml")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", default="data/processed")
    return p


def _label_set(spec: str, data_dir: Path) -> dict[str, str | None]:
    """code -> description for the candidate set."""

    if spec == "train":
        path = data_dir / "labels.json"
        if not path.exists():
            raise PredictError(f"{path} not found: run `dvc repro prepare`, or pass --labels all or a file of codes")
        return {c: v.get("description") for c, v in json.loads(path.read_text()).items()}
    if spec == "all":
        return dict.fromkeys(icd10.billable_codes())
    path = Path(spec)
    if not path.exists():
        raise PredictError(f"--labels {spec}: not 'train', 'all' or an existing file")
    if path.suffix == ".json":
        return {icd10.normalize(c): (v or {}).get("description") for c, v in json.loads(path.read_text()).items()}
    return {icd10.normalize(line): None for line in path.read_text().split() if line.strip()}


def _read_batch(path: Path) -> list[tuple[int, str | None]]:
    """(row number, text or None for a bad row)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_json(path, lines=True)
    except Exception as exc:
        raise PredictError(f"--input {path}: cannot read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                           "give a .csv or .jsonl file") from None
    cols = {c.strip().lower(): c for c in frame.columns}
    col = next((cols[c] for c in ("input", "dialogue", "note", "text") if c in cols), None)
    if col is None:
        raise PredictError(f"--input {path}: no column input, dialogue, note or text; found {list(frame.columns)}")
    rows = []
    for i, value in enumerate(frame[col], start=1):
        rows.append((i, value.strip() if isinstance(value, str) and value.strip() else None))
    return rows


def _resolve_model(args, params: dict) -> tuple[Path, dict, Path | None, systems.System]:
    """The base model, its registry entry, the adapter (or None) and the system they make (of the table, or
    named as the demo names its systems)."""

    key = args.model or (systems.get(params, args.system).model if args.system in systems.by_id(params) else DEFAULT_MODEL)
    if Path(key).is_dir():
        base, entry = Path(key), {"key": Path(key).name, "dtype": "auto"}
    else:
        try:
            entry = model_entry(params, key)
        except ParamError as exc:
            raise PredictError(f"--model {key}: {exc}") from None
        base = Path("models/base") / key
        if not base.exists():
            raise PredictError(f"--model {key}: {base} not found; run `dvc repro base@{key}` first")
    return base, entry, *_system_for(args, params, entry["key"])


def _system_for(args, params: dict, model: str) -> tuple[Path | None, systems.System]:
    """(adapter, system): --system's (any language-model system), else, among plain and shortlist prompts, the
    table's first fine-tuned system on ``model`` whose adapter exists
    (unless --no-adapter; with --shortlist one whose prompt lists codes), else its first untrained one with the
    prompt asked for; --adapter replaces the adapter."""
    if args.system:
        try:
            chosen = systems.get(params, args.system)
        except ParamError as exc:
            raise PredictError(f"--system: {exc}") from None
        if chosen.floor:
            raise PredictError(f"--system {chosen.id}: a floor; predict serves the language-model systems (systems.llm)")
        if chosen.fine_tuned and not args.adapter and not (chosen.adapter / "adapter_config.json").exists():
            raise PredictError(f"--system {chosen.id}: {chosen.adapter} not found; run `dvc repro {chosen.train_stage}`")
    else:
        options = [s for s in systems.selected(params) if s.model == model and not s.floor
                   and not style(s.prompt).shows_examples and (style(s.prompt).shows_shortlist or not args.shortlist)]
        # a fine-tuned system whatever its prompt (--shortlist: one that lists codes); untrained, the prompt asked for
        tuned = [s for s in options if s.fine_tuned and (s.adapter / "adapter_config.json").exists()]
        untrained = [s for s in options if not s.fine_tuned and style(s.prompt).shows_shortlist == args.shortlist]
        chosen = next(iter((tuned if not args.no_adapter else []) + untrained), None)
    if chosen is None or (args.adapter and not args.system and not chosen.fine_tuned):
        chosen = _ad_hoc(model, bool(args.adapter) and not args.no_adapter, args.shortlist)
    adapter = Path(args.adapter) if args.adapter else chosen.adapter if not args.no_adapter else None
    return adapter, chosen


def _ad_hoc(model: str, tuned: bool, listed: bool) -> systems.System:
    """A model or adapter outside the table, named as the demo names its systems (its thresholds, if stage
    score wrote any under that name, route it)."""
    name = ("lora-" + ("shortlist-" if listed else "") if tuned else ("shortlist-" if listed else "zeroshot-")) + model
    return systems.System(name, model=model, prompt="shortlist" if listed else "plain", retrieved=5 if listed else 0)


def _result(res: dict, labels: dict, min_conf: float) -> dict:
    candidates = [{"code": icd10.dotted(c["code"]),
                   "description": icd10.coder_description(c["code"], labels.get(c["code"])),
                   "score": c["score"],
                   "chapter": icd10.chapter(c["code"])} for c in (res["candidates"] or [])]
    top = candidates[0]["score"] if candidates else 0.0
    return {"candidates": candidates, "abstained": top < min_conf, "top_score": top}


def routing(system: systems.System, metrics_dir: Path, target: float) -> dict:
    """The threshold a system codes without review at ``target`` precision, as stage score chose it on
    validation: {signal, threshold, target, system, validation_precision, source} (threshold None with a
    reason where there is none)."""

    path = metrics_dir / f"{system.id}.json"
    k = thresholds.key(target)
    if not path.exists():
        return {"system": system.id, "target": target, "threshold": None,
                "reason": f"{path} not found: run `dvc repro score` for the thresholds certified on the calibration rows"}
    m = read_json(path)
    if f"threshold_at_{k}" not in m:
        return {"system": system.id, "target": target, "threshold": None,
                "reason": f"{path} has no threshold for {100 * target:g}% precision (deploy.target_precision)"}
    return {"system": system.id, "target": target, "signal": m["confidence_signal"], "threshold": m[f"threshold_at_{k}"],
            "validation_precision": m.get(f"precision_at_{k}"), "validation_coverage": m.get(f"coverage_at_{k}"),
            "source": str(path), **({"reason": m[f"threshold_at_{k}_reason"]} if m.get(f"threshold_at_{k}_reason") else {})}


def uncertified_because(system: systems.System, params: dict, adapter: Path | None, labels, data_dir: Path,
                        top_k: int, input_kind: str) -> str | None:
    """Why a system's stored thresholds do not hold for this decoding (None where they do). A threshold was certified
    on the confidences of the system's own predict@ stage: its adapter, the training label set, its top-k beams and
    the study's input field. Another adapter, label set, a wider top-k or another input makes other confidences."""
    if system.id not in systems.by_id(params):
        return f"{system.id} is no system of params.yaml, so nothing was certified for it"
    own = Path(system.adapter) if system.adapter else None
    if (adapter and adapter.resolve()) != (own and own.resolve()):
        return (f"the adapter {adapter or 'none (the base model)'} is not {system.id}'s own "
                f"({own or 'none: the base model'})")
    certified = data_dir / "labels.json"
    if not certified.exists() or set(labels) != set(json.loads(certified.read_text())):
        return f"these {len(labels):,} candidate codes are not the {certified} label set the thresholds were certified on"
    own_top_k = max(systems_top_k(system, params), 2)
    if top_k > own_top_k:
        return f"--top-k {top_k} searches more beams than {system.id}'s {own_top_k}, which rank other confidences"
    if input_kind != params["data"]["input"]:
        return f"--input-kind {input_kind} is not the study's data.input ({params['data']['input']})"
    return None


def systems_top_k(system: systems.System, params: dict) -> int:
    """The top-k a system's predict@ stage decodes with: params `decoding`'s, then its own `decoding`."""
    return {**params["decoding"], **system.decoding}["top_k"]


def route(raw: dict, rule: dict, first: str | None) -> str | None:
    """code or review for one prediction (evaluation's raw result), by ``rule`` (from ``routing``); None without
    a rule. Where validation reached no threshold, every encounter goes to review."""

    if "signal" not in rule:
        return None
    if rule["threshold"] is None:
        return "review"
    return "code" if thresholds.coded([{"id": "x", **raw}], {"x": first}, rule["signal"], rule["threshold"])[0] else "review"


def predict(texts: list[str], tokenizer, model, labels: dict, top_k: int, input_kind: str, system: systems.System,
            params: dict, train_rows: list[dict], min_confidence: float = 0.0, progress: bool = False,
            rule: dict | None = None) -> list[dict]:
    """Each text decoded as ``system``'s predict@ stage decodes a row: its prompt style (the nearest of
    ``train_rows`` shown, or the codes retrieved from them listed), params `decoding` with the system's own keys,
    the same ``Decoding``; constrained to ``labels``, with at least ``top_k`` (and 2) beams. ``rule``: the routing threshold
    (``routing``); a retriever-agreement signal reads the TF-IDF retriever's first code, as `score` does."""
    known = frozenset(labels)
    rows = [{"id": f"input-{i}", "code": None, "input": icd10.redact(t, known)} for i, t in enumerate(texts)]
    retrieval = params["retrieval"]
    rows = prompt_rows(system.prompt, train_rows, rows, system.retrieved, retrieval)
    settings = generation_settings(params["decoding"], system.decoding, system.prompt, system.retrieved)
    settings = replace(settings, constrained=True, top_k=max(top_k, settings.top_k, 2))
    raw = Decoding(tuple(labels), settings, tuple(train_rows), retrieval).run(model, tokenizer, rows, input_kind,
                                                                                progress=progress)
    first = [None] * len(rows)
    if (rule or {}).get("signal") == "retriever_agreement":
        first = [r[SHORTLIST][0]["code"] if r[SHORTLIST] else None for r in with_shortlists(train_rows, rows, 1, retrieval)]
    results = []
    for row, out, top in zip(rows, raw, first):
        r = _result(out, labels, min_confidence)
        r["candidates"] = r["candidates"][:top_k]
        if row.get(SHORTLIST):
            r[SHORTLIST] = [icd10.dotted(c["code"]) for c in row[SHORTLIST]]
        if "shot_ids" in out:
            r["shown_examples"] = out["shot_ids"]
        if rule:
            r["route"] = route(out, rule, top)
        results.append(r)
    return results


def _train_rows(data_dir: Path, who: str) -> list[dict]:
    """The training split, where the system's prompt shows what the retriever finds in it (or its signal asks)."""
    train = data_dir / "train.jsonl"
    if not train.exists():
        raise PredictError(f"{who}: {train} not found: run `dvc repro prepare` (the retriever searches it)")
    return read_jsonl(train)


def _rule(args, params: dict, system: systems.System, adapter: Path | None, labels, input_kind: str) -> dict:
    """The routing rule at --target (default the highest of deploy.target_precision), uncertified (every
    encounter to review, with the reason) where this decoding is not the one the threshold was certified on."""
    target = args.target or max((params.get("deploy") or {}).get("target_precision") or [0.95])
    rule = routing(system, Path(args.metrics), target)
    why = uncertified_because(system, params, adapter, labels, Path(args.data), args.top_k, input_kind)
    if why and rule.get("threshold") is not None:
        rule = {**rule, "threshold": None, "uncertified": why, "reason": f"uncertified routing: {why}"}
    return rule


def _print_human(result: dict) -> None:
    if result["abstained"]:
        print(f"ABSTAINED: top score {result['top_score']:.3f} is below --min-confidence; refer to a coder.")
    for rank, c in enumerate(result["candidates"], start=1):
        print(f"{rank}. {c['code']:<9} {c['score']:.3f}  {c['description'] or '(not in the current ICD-10-CM table)'}"
              f"  [chapter {c['chapter']}]")


def _route_line(decision: str | None, rule: dict) -> str:
    if decision is None:
        return f"Route: none ({rule.get('reason')})"
    if rule.get("uncertified"):
        return f"Route: REVIEW (every encounter): {rule['reason']}"
    if rule["threshold"] is None:
        return (f"Route: REVIEW: {rule['system']} has no threshold certified for {100 * rule['target']:g}% precision "
                f"({rule.get('reason')})")
    return (f"Route: {decision.upper()} ({rule['signal']} threshold {rule['threshold']:.3g} for {100 * rule['target']:g}% "
            f"precision, certified on calibration for {rule['system']}: {_pct(rule['validation_precision'])} precise, "
            f"{_pct(rule['validation_coverage'])} coded on validation; {rule['source']})")


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _read_rows(args) -> list[tuple[int, str | None]]:
    """(row number, text) of the batch file, or the one encounter of --text, --file or standard input."""
    if args.input:
        return _read_batch(Path(args.input))
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise PredictError(f"--file {args.file}: {exc.strerror}") from None
    else:
        text = args.text if args.text is not None else ("" if sys.stdin.isatty() else sys.stdin.read())
    if not text.strip():
        raise PredictError("the encounter is empty: pass --text, --file, or text on standard input")
    return [(1, text.strip())]


def main(argv=None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = _parser().parse_args(argv)
    try:
        if args.top_k is not None and args.top_k < 1:
            raise PredictError("--top-k must be at least 1")
        rows = _read_rows(args)


        try:
            params = load_params(args.params)
        except ParamError as exc:
            raise PredictError(str(exc)) from None
        base, entry, adapter, system = _resolve_model(args, params)
        args.top_k = args.top_k or systems_top_k(system, params)
        labels = _label_set(args.labels, Path(args.data))
        input_kind = args.input_kind or params.get("data", {}).get("input", "dialogue")
        rule = _rule(args, params, system, adapter, labels, input_kind)
        needs_train = style(system.prompt).uses_retriever or rule.get("signal") == "retriever_agreement"
        train_rows = _train_rows(Path(args.data), "--shortlist" if args.shortlist else system.id) if needs_train else []
        try:
            tokenizer, model = load_for_inference(base, entry, adapter)
        except (ModelError, OSError) as exc:
            raise PredictError(str(exc)) from None
    except PredictError as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2

    good = [(n, t) for n, t in rows if t is not None]
    for n, _ in (r for r in rows if r[1] is None):
        print(f"predict: row {n}: empty input, skipped", file=sys.stderr)
    texts = [t for _, t in good]
    try:
        results = predict(texts, tokenizer, model, labels, args.top_k, input_kind, system, params, train_rows,
                          args.min_confidence, progress=bool(args.input), rule=rule)
    except (ModelError, PredictError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    system = system.id
    if args.input:
        lines = [json.dumps({"row": n, "system": system, **r, "routing": rule}) for (n, _), r in zip(good, results)]
        lines += [json.dumps({"row": n, "error": "empty input"}) for n, t in rows if t is None]
        text = "\n".join(lines) + "\n"
        if args.output:
            write_text_atomic(args.output, text)
            print(f"predict: {len(good)} encounters scored, {len(rows) - len(good)} skipped -> {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        print(DISCLAIMER, file=sys.stderr)
        return 0
    result = results[0]
    if args.json:
        print(json.dumps({"system": system, **result, "routing": rule, "note": DISCLAIMER}, indent=2))
    else:
        print(f"Top {args.top_k} ICD-10-CM suggestions ({system}):")
        if result.get(SHORTLIST):
            print(f"(codes listed to the model: {', '.join(result[SHORTLIST])})")
        _print_human(result)
        print(_route_line(result.get("route"), rule))
        print(DISCLAIMER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
