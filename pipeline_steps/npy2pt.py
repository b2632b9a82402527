"""Convert an exported model (``weights.txt`` + ``.npy`` files) back to PyTorch: the paper's ``npy2pt`` direction.

:func:`read_export` parses the manifest (format in ``cuda_lib/README.md``) and returns the dense
state dict (tiled weights unpacked, removed tiles zero), the config records and the masks
(tile layouts + pruned heads), so ``export_npy`` → ``npy2pt`` round-trips. The command line writes an
HF folder (``model.safetensors`` + ``config.json``, plus the tokenizer when ``--tokenizer-dir`` is given)
and ``masks.json``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import stage
from .export_npy import CONFIG_KEYS, MANIFEST
from .tiles import ModelMasks, TileLayout

DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2")}


class ManifestError(ValueError):
    """A malformed manifest or a file that disagrees with it; the message names line or file."""


@dataclass
class Export:
    """What a manifest folder holds, in PyTorch terms."""

    config: dict[str, str]
    tensors: dict[str, np.ndarray]  # dense float32, state-dict names
    masks: ModelMasks


def _plain_file(folder: Path, name: str, where: str) -> Path:
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ManifestError(f"{where}: file name {name!r} is not a plain file name inside the manifest's folder")
    path = folder / name
    real, root = path.resolve(), folder.resolve()
    if path.exists() and root not in real.parents:
        raise ManifestError(f"{where}: {path} resolves to {real}, outside the folder {root}")
    return path


def _load(path: Path, dtype: np.dtype, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{where}: cannot read {path}: {exc}") from exc
    if arr.dtype != dtype or arr.shape != shape:
        raise ManifestError(f"{where}: {path.name} is {arr.dtype.str} {arr.shape}, the manifest says {dtype.str} {shape}")
    return arr


def _shape(text: str, where: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise ManifestError(f"{where}: malformed shape {text!r}") from None


def read_export(manifest: Path) -> Export:
    """Parse ``manifest`` and load its tensors (dense float32) from the manifest's folder."""
    manifest = Path(manifest)
    folder = manifest.parent
    config: dict[str, str] = {}
    tensors: dict[str, np.ndarray] = {}
    layouts: dict[str, TileLayout] = {}
    heads: dict[int, list[int]] = {}
    lines = manifest.read_text().splitlines()
    records = [(i + 1, ln.split()) for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]
    if not records or records[0][1] != ["et-weights", "1"]:
        raise ManifestError(f"{manifest}: the first record must be 'et-weights 1'")
    for line_no, f in records[1:]:
        where = f"{manifest}:{line_no}"
        kind = f[0]
        if kind == "config" and len(f) == 3:
            config[f[1]] = f[2]
        elif kind == "tensor" and len(f) == 5 and f[2] in DTYPES:
            shape = _shape(f[3], where)
            tensors[f[1]] = _load(_plain_file(folder, f[4], where), DTYPES[f[2]], shape, where).astype(np.float32)
        elif kind == "tiled" and len(f) == 7 and f[2] in DTYPES:
            rows, cols = _shape(f[3], where)
            tr, tc = (int(v) for v in f[4].split("x"))
            kept = np.load(_plain_file(folder, f[6], where), allow_pickle=False)
            if kept.dtype != np.dtype("<i4") or kept.ndim != 1:
                raise ManifestError(f"{where}: {f[6]} must be <i4 1-D, got {kept.dtype.str} {kept.shape}")
            try:
                layout = TileLayout((rows, cols), (tr, tc), kept)
            except ValueError as exc:
                raise ManifestError(f"{where}: {exc}") from exc
            data = _load(_plain_file(folder, f[5], where), DTYPES[f[2]], (kept.size, tr, tc), where)
            tensors[f[1]] = layout.unpack(data.astype(np.float32))
            layouts[f[1]] = layout
        elif kind == "pruned_heads" and len(f) == 3:
            heads[int(f[1])] = sorted(int(h) for h in f[2].split(","))
        else:
            raise ManifestError(f"{where}: unrecognised record {' '.join(f)!r}")
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ManifestError(f"{manifest}: missing config keys {missing}")
    return Export(config, tensors, ModelMasks(layouts, heads))


def to_hf_config(config: dict[str, str]):
    """A ``BertConfig`` from the manifest's config records."""
    from transformers import BertConfig

    return BertConfig(
        num_hidden_layers=int(config["layers"]), hidden_size=int(config["hidden"]),
        num_attention_heads=int(config["heads"]), intermediate_size=int(config["intermediate"]),
        vocab_size=int(config["vocab"]), max_position_embeddings=int(config["max_positions"]),
        type_vocab_size=int(config["type_vocab"]), num_labels=int(config["labels"]),
        layer_norm_eps=float(config["layer_norm_eps"]), hidden_act=config["activation"],
        architectures=["BertForSequenceClassification"],
    )


def to_model(export: Export):
    """A ``BertForSequenceClassification`` (eager attention) holding the exported weights."""
    import torch
    from transformers import BertForSequenceClassification

    config = to_hf_config(export.config)
    config._attn_implementation = "eager"
    model = BertForSequenceClassification(config).eval()
    state = {k: torch.from_numpy(v) for k, v in export.tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ManifestError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model


def main(argv: list[str] | None = None) -> int:
    """Convert a manifest folder into an HF checkpoint folder (+ masks.json)."""
    p = stage.base_parser(__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, required=True, help=f"{MANIFEST} of an exported model")
    p.add_argument("--tokenizer-dir", type=Path, default=None, help="copy this folder's tokenizer into the output")
    p.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args(argv)
    stage.setup_runtime(args.threads, args.seed)
    export = read_export(args.manifest)
    model = to_model(export)
    with stage.atomic_dir(args.out_dir) as tmp:
        model.save_pretrained(tmp)
        if args.tokenizer_dir is not None:
            from .modeling import load_tokenizer

            load_tokenizer(args.tokenizer_dir).save_pretrained(tmp)
        export.masks.save(tmp / "masks.json")
    print(f"npy2pt: {len(export.tensors)} tensors -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
