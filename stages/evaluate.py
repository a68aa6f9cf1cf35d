"""The stage that writes a model system's predictions: zeroshot@<model>, fewshot@<model>,
shortlist@<model>, evaluate@<model>, evaluate-shortlist@<model>, and any model kind added to
icdstudy/systems.py.

    python stages/evaluate.py KIND MODEL        e.g. `lora-shortlist smollm2-135m`

The kind (icdstudy.systems.KINDS) says how the prompt presents an encounter (alone, after its
eval.retrieval_k nearest training examples, or with the eval.candidates codes the TF-IDF retriever
ranks highest) and whether the model's LoRA adapter (models/adapters/<system>, written by the kind's
training stage) is merged in first. The model is loaded once and predicts the validation split, then
the test split (the first eval.max_samples rows of each); the adapters of the other `train.seeds`
predict the test split. All systems share the prompts and constrained generation.

Writes predictions/val/<system>.jsonl, predictions/<system>.jsonl (test),
predictions/seeds/<system>/seed-<n>.jsonl and predictions/runs/<system>.json (load time, memory,
size, settings); stage `score` turns them into metrics. An interrupted run resumes from
.resume/<system>-<split>.jsonl.
"""
import argparse
import sys
import time
from pathlib import Path

from icdstudy import systems
from icdstudy.io import read_json, read_jsonl, write_json, write_jsonl
from icdstudy.params import ParamError, load_params, model_entry, section


def main(argv=None) -> int:
    model_kinds = [k.name for k in systems.KINDS if not k.floor]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=model_kinds, metavar="KIND", help=f"a kind of system: {', '.join(model_kinds)}")
    parser.add_argument("model", help="a key under models: in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed")
    args = parser.parse_args(argv)

    kind = systems.kind_named(args.kind)
    system = systems.system(kind, args.model)
    try:
        params = load_params(args.params)
        entry = model_entry(params, args.model)
        ecfg, retrieval = section(params, "eval"), section(params, "retrieval")
        input_kind = section(params, "data")["input"]
    except ParamError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 1
    if kind.prompt == "candidates" and not ecfg["candidates"]:
        print(f"evaluate: error: {system.id} lists candidate codes; it needs eval.candidates >= 1 in params.yaml",
              file=sys.stderr)
        return 1
    if kind.fine_tuned and not (system.adapter / "adapter_config.json").exists():
        print(f"evaluate: error: {system.adapter} holds no adapter; run `dvc repro {system.train_stage}` first",
              file=sys.stderr)
        return 1

    # Heavy imports after argument parsing keep --help instant.
    import torch

    from icdstudy import metrics
    from icdstudy.evaluation import evaluate, model_fingerprint, prompt_rows, settings_for
    from icdstudy.modeling import ModelError, count_parameters, is_oom, load_for_inference, oom_message
    from icdstudy.retrieval import Retriever

    data = Path(args.data)
    train_rows = read_jsonl(data / "train.jsonl")
    labels = read_json(data / "labels.json")
    settings = settings_for(kind.prompt, ecfg)
    retriever = Retriever.from_params(train_rows, retrieval) if kind.prompt == "candidates" else None
    splits = {}
    for split in systems.SPLITS:
        rows = read_jsonl(data / f"{split}.jsonl")[:ecfg["max_samples"] or None]
        if not rows:
            print(f"evaluate: error: {data}/{split}.jsonl has no samples; rerun `dvc repro prepare` "
                  "(it refuses empty splits)", file=sys.stderr)
            return 1
        splits[split] = prompt_rows(kind.prompt, train_rows, rows, ecfg, retrieval, retriever)
    base_dir = Path(f"models/base/{args.model}")

    def run(name: str, adapter, split_names) -> dict | None:
        """Load one model and predict the named splits: {split: predictions}, None after printing the error."""
        torch.manual_seed(ecfg["seed"])
        t_start = time.time()
        try:
            tokenizer, model = load_for_inference(base_dir, entry, adapter)
        except (ModelError, OSError) as exc:
            print(f"evaluate: error: {exc}", file=sys.stderr)
            return None
        load_s = time.time() - t_start
        out = {}
        for split in split_names:
            rows = splits[split]
            print(f"evaluate: {name} on {len(rows)} {split} samples, {len(labels)} labels, "
                  f"{'constrained top-' + str(settings.top_k) if settings.constrained else 'free text'}"
                  + (f", {settings.few_shot} {settings.few_shot_strategy} examples each" if settings.few_shot else "")
                  + (f", {ecfg['candidates']} listed codes each" if kind.prompt == "candidates" else "")
                  + f", load {load_s:.1f}s")
            try:
                out[split] = evaluate(model, tokenizer, rows, labels, settings, input_kind, train_rows,
                                      fingerprint_parts={"model": model_fingerprint(base_dir, adapter)},
                                      resume_file=Path(".resume") / f"{name}-{split}.jsonl", retrieval=retrieval)
            except ModelError as exc:
                print(f"evaluate: error: {exc}", file=sys.stderr)
                return None
            except Exception as exc:
                if not is_oom(exc):
                    raise
                batch = "eval.fewshot_batch_size" if kind.prompt == "examples" else "eval.batch_size"
                print(f"evaluate: error: {oom_message(name, f'{batch}, eval.top_k / eval.num_beams or eval.max_input_tokens')}",
                      file=sys.stderr)
                return None
            hits = sum(p["pred"] == p["gold"] for p in out[split])
            print(f"evaluate: {name}: {split} exact {hits}/{len(rows)}")
        out["record"] = {"params_total": count_parameters(model), "peak_mem_mb": metrics.peak_memory_mb(),
                         "load_s": round(load_s, 2), "wall_s": round(time.time() - t_start, 2),
                         "device": "cuda" if torch.cuda.is_available() else "cpu"}
        del model
        return out

    done = run(system.id, system.adapter, systems.SPLITS)
    if done is None:
        return 1
    seeds = []
    if kind.fine_tuned:
        manifest = read_json(system.seed_adapters / "seeds.json")
        seeds = manifest["seeds"]
        paths = systems.seed_predictions(system, params)
        for seed, path in zip(seeds[1:], paths.values()):
            extra = run(f"{system.id}-seed{seed}", system.seed_adapters / f"seed-{seed}", ["test"])
            if extra is None:
                return 1
            write_jsonl(path, extra["test"])
        write_json(Path("predictions/seeds") / system.id / "seeds.json", {"seeds": seeds, "files": [str(p) for p in paths.values()]})
    for split in systems.SPLITS:
        write_jsonl(system.predictions(split), done[split])
    write_json(system.run_record, {
        "system": system.id, "kind": kind.name, "model": args.model, **done["record"],
        "constrained": settings.constrained, "top_k": settings.top_k if settings.constrained else 1,
        "few_shot": settings.few_shot, "few_shot_strategy": settings.few_shot_strategy if settings.few_shot else None,
        "inputs_truncated": {split: sum(p["input_truncated"] for p in done[split]) for split in systems.SPLITS},
        **({"seeds": seeds} if seeds else {}),
    })
    for name in [system.id] + [f"{system.id}-seed{s}" for s in seeds[1:]]:
        for split in systems.SPLITS:
            Path(".resume", f"{name}-{split}.jsonl").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
