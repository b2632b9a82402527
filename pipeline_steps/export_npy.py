"""Stage ``export_npy``: a (retrained) HF BERT classifier + ``masks.json`` → ``.npy`` files + ``weights.txt``.

The manifest format is specified in ``cuda_lib/README.md``. Every encoder linear weight that has a
tile layout in the masks is written as a ``tiled`` record (kept tiles only, plus their ids); every
other tensor the inference library needs is a dense ``tensor`` record; pruned heads become
``pruned_heads`` records. Weights outside kept tiles and the weights of pruned heads must already
be zero (the masks were enforced in training); anything else is an error naming the tensor, since
exporting it would silently change the model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import stage, tracking
from .tiles import ModelMasks, TileLayout

MANIFEST = "weights.txt"
DTYPES = {"float32": ("f32", np.float32), "float16": ("f16", np.float16)}
CONFIG_KEYS = ("layers", "hidden", "heads", "intermediate", "vocab", "max_positions", "type_vocab", "labels",
               "layer_norm_eps", "activation")
ENCODER_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                   "intermediate.dense", "output.dense")


class ExportError(ValueError):
    """The model or its masks cannot be exported faithfully; the message names the tensor."""


@dataclass(frozen=True)
class BertShape:
    """The hyper-parameters written as ``config`` records."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    labels: int
    layer_norm_eps: float
    activation: str = "gelu"

    @classmethod
    def from_hf(cls, config) -> "BertShape":
        """From a ``transformers.BertConfig``; only the exact (erf) GELU is supported."""
        if config.hidden_act != "gelu":
            raise ExportError(f"hidden_act {config.hidden_act!r} is not supported (only exact 'gelu')")
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ExportError(f"position_embedding_type {config.position_embedding_type!r} is not supported")
        if getattr(config, "pruned_heads", None):
            raise ExportError("the checkpoint has physically removed heads (config.pruned_heads); export needs "
                              "full-shape weights with pruned heads zeroed")
        return cls(config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size,
                   config.vocab_size, config.max_position_embeddings, config.type_vocab_size, config.num_labels,
                   float(config.layer_norm_eps))

    def records(self) -> list[str]:
        """``config KEY VALUE`` lines."""
        return [f"config {k} {getattr(self, k)!r}" if isinstance(getattr(self, k), float)
                else f"config {k} {getattr(self, k)}" for k in CONFIG_KEYS]


def tensor_shapes(shape: BertShape) -> dict[str, tuple[int, ...]]:
    """Every state-dict tensor the inference library reads, with its expected shape (manifest order)."""
    h, i = shape.hidden, shape.intermediate
    out: dict[str, tuple[int, ...]] = {
        "bert.embeddings.word_embeddings.weight": (shape.vocab, h),
        "bert.embeddings.position_embeddings.weight": (shape.max_positions, h),
        "bert.embeddings.token_type_embeddings.weight": (shape.type_vocab, h),
        "bert.embeddings.LayerNorm.weight": (h,),
        "bert.embeddings.LayerNorm.bias": (h,),
    }
    dims = {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
            "attention.output.dense": (h, h), "intermediate.dense": (i, h), "output.dense": (h, i)}
    for layer in range(shape.layers):
        p = f"bert.encoder.layer.{layer}."
        for module in ENCODER_LINEARS:
            out[f"{p}{module}.weight"] = dims[module]
            out[f"{p}{module}.bias"] = (dims[module][0],)
            if module == "attention.output.dense":
                out[f"{p}attention.output.LayerNorm.weight"] = (h,)
                out[f"{p}attention.output.LayerNorm.bias"] = (h,)
        out[f"{p}output.LayerNorm.weight"] = (h,)
        out[f"{p}output.LayerNorm.bias"] = (h,)
    out.update({"bert.pooler.dense.weight": (h, h), "bert.pooler.dense.bias": (h,),
                "classifier.weight": (shape.labels, h), "classifier.bias": (shape.labels,)})
    return out


def check_masks(shape: BertShape, masks: ModelMasks, tensors: dict[str, np.ndarray]) -> None:
    """Layouts only on encoder linear weights of the right shape; pruned heads in range and zero."""
    expected = tensor_shapes(shape)
    for name, layout in masks.layouts.items():
        if name not in expected or not any(name.endswith(f"{m}.weight") for m in ENCODER_LINEARS) \
                or not name.startswith("bert.encoder.layer."):
            raise ExportError(f"masks: layout for {name!r}, which is not an encoder linear weight of this model")
        if tuple(layout.shape) != expected[name]:
            raise ExportError(f"masks: layout of {name!r} has shape {layout.shape}, the weight is {expected[name]}")
        outside = np.abs(tensors[name][~layout.dense_mask()])
        if outside.size and outside.max() != 0:
            raise ExportError(f"{name}: {int(np.count_nonzero(outside))} nonzero values (max |w| {outside.max():.3g}) "
                              "outside the kept tiles of its layout")
    d = shape.hidden // shape.heads
    for layer, heads in masks.pruned_heads.items():
        if not 0 <= layer < shape.layers:
            raise ExportError(f"masks: pruned_heads names layer {layer}; the model has {shape.layers}")
        p = f"bert.encoder.layer.{layer}.attention."
        for h in heads:
            if not 0 <= h < shape.heads:
                raise ExportError(f"masks: pruned head {h} of layer {layer} is not in [0, {shape.heads})")
            rows = slice(h * d, (h + 1) * d)
            parts = {f"{p}self.{m}.{kind}": tensors[f"{p}self.{m}.{kind}"][rows]
                     for m in ("query", "key", "value") for kind in ("weight", "bias")}
            parts[f"{p}output.dense.weight"] = tensors[f"{p}output.dense.weight"][:, rows]
            for name, part in parts.items():
                if np.any(part != 0):
                    raise ExportError(f"{name}: pruned head {h} of layer {layer} has nonzero weights")


def export_tensors(tensors: dict[str, np.ndarray], shape: BertShape, masks: ModelMasks, out_dir: Path,
                   dtype: str = "float32", source: str = "") -> dict[str, float]:
    """Write the ``.npy`` files and ``weights.txt`` of a model into ``out_dir``; returns export statistics."""
    if dtype not in DTYPES:
        raise ExportError(f"export.dtype {dtype!r} is not one of {sorted(DTYPES)}")
    word, np_dtype = DTYPES[dtype]
    expected = tensor_shapes(shape)
    for name, shp in expected.items():
        if name not in tensors:
            raise ExportError(f"the model has no tensor {name!r} (expected shape {shp})")
        if tuple(tensors[name].shape) != shp:
            raise ExportError(f"{name}: shape {tuple(tensors[name].shape)}, expected {shp} from the config")
        if not np.all(np.isfinite(tensors[name])):
            raise ExportError(f"{name}: non-finite values")
    check_masks(shape, masks, tensors)
    lines = ["et-weights 1", f"# exported by et-pipeline export_npy{' from ' + source if source else ''}",
             *shape.records()]
    stats = {"kept_tiles": 0, "total_tiles": 0, "kept_params": 0, "total_params": 0, "bytes": 0}
    for name in tqdm(expected, desc="export_npy", unit="tensor"):
        value = np.ascontiguousarray(tensors[name], dtype=np_dtype)
        layout: TileLayout | None = masks.layouts.get(name)
        is_encoder_weight = name.startswith("bert.encoder.layer.") and value.ndim == 2
        if layout is None:
            np.save(out_dir / f"{name}.npy", value)
            lines.append(f"tensor {name} {word} {','.join(map(str, value.shape))} {name}.npy")
            stored = value.size
        else:
            tiles = layout.pack(value)
            np.save(out_dir / f"{name}.tiles.npy", tiles)
            np.save(out_dir / f"{name}.index.npy", layout.kept.astype("<i4"))
            tr, tc = layout.tile
            lines.append(f"tiled {name} {word} {value.shape[0]},{value.shape[1]} {tr}x{tc} "
                         f"{name}.tiles.npy {name}.index.npy")
            stats["kept_tiles"] += int(layout.kept.size)
            stats["total_tiles"] += int(layout.n_tiles)
            stored = tiles.size
        if is_encoder_weight:
            stats["kept_params"] += int(stored)
            stats["total_params"] += int(value.size)
    for layer, heads in sorted(masks.pruned_heads.items()):
        if heads:
            lines.append(f"pruned_heads {layer} {','.join(str(h) for h in sorted(heads))}")
    (out_dir / MANIFEST).write_text("\n".join(lines) + "\n")
    stats["bytes"] = sum(p.stat().st_size for p in out_dir.iterdir())
    stats["pruned_heads"] = sum(len(h) for h in masks.pruned_heads.values())
    stats["param_density"] = stats["kept_params"] / stats["total_params"]
    stats["tile_density"] = stats["kept_tiles"] / stats["total_tiles"] if stats["total_tiles"] else 1.0
    return stats


def state_dict_arrays(model) -> dict[str, np.ndarray]:
    """A torch model's state dict as float32 NumPy arrays."""
    return {k: v.detach().to("cpu").float().numpy() for k, v in model.state_dict().items() if v.is_floating_point()}


def main(argv: list[str] | None = None) -> int:
    """Run the stage."""
    p = stage.base_parser(__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, required=True, help="HF checkpoint folder (retrained model)")
    p.add_argument("--masks", type=Path, required=True, help="masks.json (tile layouts + pruned heads)")
    p.add_argument("--sparsity", type=float, default=None, help="sweep branch (for names and metrics)")
    p.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args(argv)
    stage.setup_runtime(args.threads, args.seed)
    from .modeling import load_classifier

    dtype = args.params.get("export", {}).get("dtype", "float32")
    name = "export_npy" if args.sparsity is None else f"export_npy[s{args.sparsity:g}]"
    with tracking.stage_run(args.run_dir, name, args.params, tags={"model_dir": args.model_dir}) as run:
        masks = ModelMasks.load(args.masks)
        model = load_classifier(args.model_dir)
        shape = BertShape.from_hf(model.config)
        with stage.atomic_dir(args.out_dir) as tmp:
            stats = export_tensors(state_dict_arrays(model), shape, masks, tmp, dtype, source=str(args.model_dir))
            metrics = {**{k: float(v) for k, v in stats.items()}, "dtype_bits": 16.0 if dtype == "float16" else 32.0}
            if args.sparsity is not None:
                metrics["sparsity"] = args.sparsity
            stage.write_json(tmp / stage.METRICS_FILE, metrics)
        run.log_metrics(metrics)
        run.log_artifact(args.out_dir / MANIFEST)
        run.set_tags({"checkpoint_path": str(args.out_dir.resolve())})
    print(f"export_npy: {args.out_dir / MANIFEST} ({stats['bytes'] / 1e6:.1f} MB, "
          f"tile density {stats['tile_density']:.3f}, {stats['pruned_heads']} pruned heads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
