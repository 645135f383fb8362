"""Generator LoRA on one vs two Ray Train workers: the same held-out loss, within noise.

Takes a workdir whose `rag_examples` stage finished (e.g. after `ragworks run
jobs/scifact_generator.yaml`) and trains the `train_generator` stage's LoRA loop
twice on the same examples, batch, steps and seed: once on one worker, once on
two (gloo, each with half of every batch, gradients averaged). Prints each run's
held-out loss per checkpoint, the final difference, and examples/s of each.

    python benchmarks/generator_workers.py --workdir runs/scifact-generator [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import ray

from ragworks.config import load_spec

from ragworks.train.config import TrainGeneratorConfig
from ragworks.models import causal_lm_source
from ragworks.stage import outputs_at
from ragworks.train.train_generator import split_examples, trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/scifact-generator")
    ap.add_argument("--spec", default="jobs/scifact_generator.yaml", help="its train_generator section is used")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=10, help="steps between held-out scores")
    args = ap.parse_args()

    examples = outputs_at(Path(args.workdir) / "rag_examples").generated
    spec = load_spec(args.spec)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    results = {}
    for workers in (1, 2):
        cfg = TrainGeneratorConfig(**{**spec.train_generator.model_dump(), "workers": workers, "max_steps": args.steps,
                                      "checkpoint_every": args.every, "cpus_per_worker": 1.5 / workers})
        train, val, counts = split_examples(cfg, examples)
        with tempfile.TemporaryDirectory() as tmp:
            result = trainer(cfg, causal_lm_source(cfg.model), args.steps, train, val, Path(tmp)).fit()
            history = json.loads(result.metrics["history"])
        final = history[-1]
        results[workers] = {"history": [(h["step"], h["val_loss"]) for h in history],
                            "val_loss": final["val_loss"],
                            "examples_per_s": round(final["step"] * cfg.batch_size / final["train_seconds"], 3)}
        print(f"{workers} worker(s): held-out loss by step {results[workers]['history']}; "
              f"{results[workers]['examples_per_s']} examples/s ({counts['train']} train, {counts['val']} held out)")
    diff = results[2]["val_loss"] - results[1]["val_loss"]
    start = results[1]["history"][0][1]
    print(f"held-out loss after {args.steps} steps: 1 worker {results[1]['val_loss']:.4f}, 2 workers "
          f"{results[2]['val_loss']:.4f} (base {start:.4f}); difference {diff:+.4f} "
          f"({abs(diff) / max(start - results[1]['val_loss'], 1e-9):.1%} of the drop one worker achieved)")


if __name__ == "__main__":
    main()
