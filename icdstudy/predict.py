"""Ranked ICD-10-CM suggestions for new encounters.

    python -m icdstudy.predict --text "<dialogue or note>"          one encounter (or --file F, or stdin)
    python -m icdstudy.predict --input batch.csv --output out.jsonl  a batch (column `input`, `dialogue` or `note`)

Uses the prompts, model loading and constrained ranking of the evaluation stages. Scores are
probabilities under the model restricted to the candidate codes (they sum to at most 1). With
--min-confidence p, a result whose top score is below p is marked abstained.
Suggestions support, and do not replace, a qualified medical coder.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    p.add_argument("--model", default=None, help=f"a registry key in params.yaml or a model folder (default: {DEFAULT_MODEL}, "
                   "with its fine-tuned adapter if the pipeline trained one)")
    p.add_argument("--adapter", help="a LoRA adapter folder (default: models/adapters/<model> if present)")
    p.add_argument("--no-adapter", action="store_true", help="use the base model even if an adapter exists")
    p.add_argument("--shortlist", action="store_true", help="list, in the prompt, the eval.candidates codes the TF-IDF "
                   "retriever over the training split ranks highest, as the shortlist systems do (default adapter: "
                   "models/adapters/shortlist-<model>, trained on such prompts)")
    p.add_argument("--top-k", type=int, default=5, help="candidates to return (default 5)")
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
    from . import icd10

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


def _resolve_model(args, params: dict) -> tuple[Path, dict, Path | None]:
    from .params import ParamError, model_entry

    key = args.model or DEFAULT_MODEL
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
    adapter = None
    if args.adapter:
        adapter = Path(args.adapter)
    elif not args.no_adapter:
        run = f"shortlist-{entry['key']}" if args.shortlist else entry["key"]
        if (Path("models/adapters") / run / "adapter_config.json").exists():
            adapter = Path("models/adapters") / run
    return base, entry, adapter


def _result(res: dict, labels: dict, min_conf: float) -> dict:
    from . import icd10

    candidates = [{"code": icd10.dotted(c["code"]),
                   "description": icd10.coder_description(c["code"], labels.get(c["code"])),
                   "score": c["score"],
                   "chapter": icd10.chapter(c["code"])} for c in (res["candidates"] or [])]
    top = candidates[0]["score"] if candidates else 0.0
    return {"candidates": candidates, "abstained": top < min_conf, "top_score": top}


def predict(texts: list[str], tokenizer, model, labels: dict, top_k: int, input_kind: str,
            max_input_tokens: int | None, min_confidence: float = 0.0, progress: bool = False,
            shortlists: list[list[dict]] | None = None) -> list[dict]:
    """``shortlists``: each text's candidate shortlist for the prompt (shortlist systems), or None."""
    from . import icd10, prompts
    from .generation import GenerationSettings, run_generation

    known = frozenset(labels)
    shortlists = shortlists or [None] * len(texts)
    prompt_texts = [prompts.prompt_for(tokenizer, icd10.redact(t, known), input_kind, max_input_tokens,
                                       candidates=listed)[0] for t, listed in zip(texts, shortlists)]
    settings = GenerationSettings(batch_size=8, constrained=True, top_k=max(top_k, 2), max_input_tokens=max_input_tokens)
    out: dict[int, dict] = {}
    run_generation(model, tokenizer, prompt_texts, settings, list(labels),
                   on_batch=lambda idx, res, s: out.update(zip(idx, res)), progress=progress)
    results = []
    for i in range(len(texts)):
        r = _result(out[i], labels, min_confidence)
        r["candidates"] = r["candidates"][:top_k]
        if shortlists[i]:
            r["shortlist"] = [icd10.dotted(c["code"]) for c in shortlists[i]]
        results.append(r)
    return results


def _shortlists(texts: list[str], params: dict, data_dir: Path) -> list[list[dict]]:
    from .io import read_jsonl
    from .shortlist import with_shortlists

    train = data_dir / "train.jsonl"
    if not train.exists():
        raise PredictError(f"--shortlist: {train} not found: run `dvc repro prepare` (the retriever searches it)")
    n = params.get("eval", {}).get("candidates") or 5
    rows = [{"id": f"input-{i}", "input": t} for i, t in enumerate(texts)]
    return [r["shortlist"] for r in with_shortlists(read_jsonl(train), rows, n, params["retrieval"])]


def _print_human(result: dict) -> None:
    if result["abstained"]:
        print(f"ABSTAINED: top score {result['top_score']:.3f} is below --min-confidence; refer to a coder.")
    for rank, c in enumerate(result["candidates"], start=1):
        print(f"{rank}. {c['code']:<9} {c['score']:.3f}  {c['description'] or '(not in the current ICD-10-CM table)'}"
              f"  [chapter {c['chapter']}]")


def main(argv=None) -> int:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    args = _parser().parse_args(argv)
    try:
        if args.top_k < 1:
            raise PredictError("--top-k must be at least 1")
        if args.input:
            rows = _read_batch(Path(args.input))
        else:
            if args.file:
                try:
                    text = Path(args.file).read_text(encoding="utf-8")
                except OSError as exc:
                    raise PredictError(f"--file {args.file}: {exc.strerror}") from None
            else:
                text = args.text if args.text is not None else ("" if sys.stdin.isatty() else sys.stdin.read())
            if not text.strip():
                raise PredictError("the encounter is empty: pass --text, --file, or text on standard input")
            rows = [(1, text.strip())]

        from .params import ParamError, load_params

        try:
            params = load_params(args.params)
        except ParamError as exc:
            raise PredictError(str(exc)) from None
        base, entry, adapter = _resolve_model(args, params)
        labels = _label_set(args.labels, Path(args.data))
        input_kind = args.input_kind or params.get("data", {}).get("input", "dialogue")
        max_tokens = params.get("eval", {}).get("max_input_tokens")

        from .modeling import ModelError, load_for_inference

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
    try:
        listed = _shortlists([t for _, t in good], params, Path(args.data)) if args.shortlist else None
        results = predict([t for _, t in good], tokenizer, model, labels, args.top_k, input_kind, max_tokens,
                          args.min_confidence, progress=bool(args.input), shortlists=listed)
    except (ModelError, PredictError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    kind = ("lora-shortlist" if args.shortlist else "lora") if adapter else ("shortlist" if args.shortlist else "zeroshot")
    system = f"{kind}-{entry['key']}"
    if args.input:
        lines = [json.dumps({"row": n, "system": system, **r}) for (n, _), r in zip(good, results)]
        lines += [json.dumps({"row": n, "error": "empty input"}) for n, t in rows if t is None]
        text = "\n".join(lines) + "\n"
        if args.output:
            from .io import write_text_atomic

            write_text_atomic(args.output, text)
            print(f"predict: {len(good)} encounters scored, {len(rows) - len(good)} skipped -> {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        print(DISCLAIMER, file=sys.stderr)
        return 0
    result = results[0]
    if args.json:
        print(json.dumps({"system": system, **result, "note": DISCLAIMER}, indent=2))
    else:
        print(f"Top {args.top_k} ICD-10-CM suggestions ({system}):")
        if result.get("shortlist"):
            print(f"(shortlist shown to the model: {', '.join(result['shortlist'])})")
        _print_human(result)
        print(DISCLAIMER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
