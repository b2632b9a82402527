"""Import GPU pipeline runs into the repository: each tarball that ``cuda_lib/gpu/pipeline_gpu.sh`` packs
(``$OUT/<run>.tgz`` of a ``bash cuda_lib/gpu/run_all.sh pipeline`` device call) becomes
``docs/gpu-run/<run>/``, and the README's generated block (between ``<!-- gpu-run:begin -->`` and
``<!-- gpu-run:end -->``) is rewritten from every run under ``docs/gpu-run/``.

Per run it copies report.md (image links rewritten to resolve inside ``docs/gpu-run/<run>/``),
summary.json, the PNG plots (accuracy_vs_sparsity.png, bench/*.png), bench/bench.csv, bench/bench.json
and the per-stage metrics.json files as ``metrics/<stage>.json`` / ``metrics/<stage>_s<sparsity>.json``,
and writes source.json + SOURCE.md (command, config overlay, device, date, git commit, tarball digest).
A re-import replaces the run's folder as a whole.

    python cuda_lib/gpu/import_run.py /path/to/minilm-gpu.tgz /path/to/minilm-gpu-admm.tgz [--commit SHA]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import posixpath
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_steps import bench, config, stage  # noqa: E402
from pipeline_summary import parity  # noqa: E402

DEVICE_COMMAND = "bash cuda_lib/gpu/run_all.sh pipeline"
BEGIN, END = "<!-- gpu-run:begin -->", "<!-- gpu-run:end -->"
IMAGE_LINK = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")
METRICS = re.compile(r"(?P<stage>[A-Za-z0-9_]+)/(?:(?P<branch>s[0-9.]+)/)?metrics\.json")
COPIED = re.compile(r"summary\.json|accuracy_vs_sparsity\.png|bench/[^/]+\.png|bench/bench\.(csv|json)")


class RunImportError(ValueError):
    """A tarball or README that cannot be imported; the message names the file and the problem."""


@dataclass
class RunArchive:
    """The files of one run tarball that the import uses (paths relative to ``results/<run>/``)."""

    tarball: Path
    run: str
    files: dict[str, bytes]
    overlay: str | None  # the run's config overlay (tmp/et-gpu-<run>.yaml), as written
    summary_mtime: float
    sha256: str


def read_tarball(path: Path) -> RunArchive:
    """Read the regular files of one run tarball; raise RunImportError when it holds no single
    ``results/<run>/summary.json`` or lacks report.md."""
    if not path.is_file():
        raise RunImportError(f"{path}: no such tarball")
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            runs = sorted({m.name.split("/")[1] for m in members
                           if re.fullmatch(r"results/[^/]+/summary\.json", m.name)})
            if len(runs) != 1:
                raise RunImportError(f"{path}: expected exactly one results/<run>/summary.json, found "
                                   f"{len(runs)} ({', '.join(runs) or 'none'})")
            run = runs[0]
            prefix = f"results/{run}/"
            files, overlay, mtime = {}, None, 0.0
            for m in members:
                if ".." in m.name.split("/"):
                    raise RunImportError(f"{path}: member {m.name!r} leaves its folder")
                if m.name.startswith(prefix):
                    files[m.name[len(prefix):]] = tar.extractfile(m).read()
                    if m.name == prefix + "summary.json":
                        mtime = m.mtime
                elif m.name.endswith(f"et-gpu-{run}.yaml"):
                    overlay = tar.extractfile(m).read().decode()
    except tarfile.TarError as exc:
        raise RunImportError(f"{path}: not a readable tarball ({exc})") from exc
    if "report.md" not in files:
        raise RunImportError(f"{path}: no results/{run}/report.md")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return RunArchive(path, run, files, overlay, mtime, digest)


def destination(rel: str) -> str | None:
    """Where a file of ``results/<run>/`` goes inside ``docs/gpu-run/<run>/`` (None: not imported)."""
    if rel == "report.md" or COPIED.fullmatch(rel):
        return rel
    m = METRICS.fullmatch(rel)
    if m:
        return f"metrics/{m['stage']}" + (f"_{m['branch']}" if m["branch"] else "") + ".json"
    return None


def rewrite_image_links(report: str, run: str, mapping: dict[str, str]) -> str:
    """Point every image link of ``report`` at its imported copy; ``mapping`` maps paths relative to
    ``results/<run>/`` to paths relative to the imported folder. A link to a file that is not imported
    raises RunImportError (it would be broken in docs/)."""
    def fix(m: re.Match) -> str:
        target = m[2]
        if re.match(r"[a-z]+://", target):
            return m[0]
        marker = f"results/{run}/"
        rel = target.split(marker, 1)[1] if marker in target else target
        rel = posixpath.normpath(rel)
        if rel not in mapping:
            raise RunImportError(f"report.md of {run}: image {target!r} is not among the imported files")
        return m[1] + mapping[rel] + m[3]

    return IMAGE_LINK.sub(fix, report)


def _json(archive: RunArchive, rel: str) -> dict:
    try:
        value = json.loads(archive.files[rel])
    except (KeyError, json.JSONDecodeError) as exc:
        raise RunImportError(f"{archive.tarball}: results/{archive.run}/{rel} is missing or not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise RunImportError(f"{archive.tarball}: results/{archive.run}/{rel} is not a JSON object")
    return value


def source_info(archive: RunArchive, summary: dict, commit: str | None, command: str) -> dict:
    """Provenance of a run: command, config overlay, prune algorithm, device, date, commit, digest."""
    meta = _json(archive, "bench/bench.json").get("meta", {}) if "bench/bench.json" in archive.files else {}
    overlay = yaml.safe_load(archive.overlay) if archive.overlay else {}
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    effective = config.apply_preset(config.deep_merge(base, overlay or {}))
    devices = {b.get("infer", {}).get("device") for b in summary.get("sweep", {}).values()} | {meta.get("device")}
    devices.discard(None)
    return {
        "run": archive.run,
        "command": command,
        "config_overlay": archive.overlay,
        "prune_algorithm": effective["prune"]["algorithm"],
        "device": ", ".join(sorted(devices)) or None,
        "date_utc": dt.datetime.fromtimestamp(archive.summary_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        if archive.summary_mtime else None,
        "git_commit": commit or summary.get("git_commit") or meta.get("git_commit"),
        "tarball": archive.tarball.name,
        "tarball_sha256": archive.sha256,
    }


def source_markdown(info: dict, imported: list[str]) -> str:
    """SOURCE.md of an imported run."""
    lines = [f"# Source of `{info['run']}`", "",
             f"- command (on the GPU machine): `{info['command']}` "
             "(cuda_lib/gpu/pipeline_gpu.sh runs the Snakemake target `all` on config.yaml"
             + (" with the overlay below)" if info["config_overlay"] else ")"),
             f"- prune algorithm: {info['prune_algorithm']}",
             f"- device: {info['device'] or 'not recorded in the run'}",
             f"- date: {info['date_utc'] + ' UTC (summary.json written)' if info['date_utc'] else 'not recorded'}",
             f"- git commit: {info['git_commit'] or 'not recorded in the run artifacts'}",
             f"- tarball: `{info['tarball']}` (sha256 `{info['tarball_sha256']}`)",
             "- imported by `python cuda_lib/gpu/import_run.py`; the figures of the README block come from summary.json"]
    if info["config_overlay"]:
        lines += ["", "Config overlay:", "", "```yaml", info["config_overlay"].rstrip(), "```"]
    lines += ["", "Files: " + ", ".join(f"`{p}`" for p in sorted(imported)), ""]
    return "\n".join(lines)


def import_run(archive: RunArchive, docs_dir: Path, commit: str | None, command: str) -> Path:
    """Write ``docs_dir/<run>/`` from one archive, replacing an earlier import; return the folder."""
    summary = _json(archive, "summary.json")
    if summary.get("run_name", archive.run) != archive.run:
        raise RunImportError(f"{archive.tarball}: summary.json names run {summary['run_name']!r}, "
                           f"its folder is {archive.run!r}")
    mapping = {rel: dest for rel in archive.files if (dest := destination(rel))}
    report = rewrite_image_links(archive.files["report.md"].decode(), archive.run, mapping)
    info = source_info(archive, summary, commit, command)
    with stage.atomic_dir(docs_dir / archive.run) as tmp:
        for rel, dest in mapping.items():
            out = tmp / dest
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(report.encode() if rel == "report.md" else archive.files[rel])
        (tmp / "source.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        (tmp / "SOURCE.md").write_text(source_markdown(info, list(mapping.values())))
    return docs_dir / archive.run


# ----------------------------------------------------------------------------- README block
def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def accuracy_rows(runs: list[tuple[str, dict, dict]], link_root: str) -> list[str]:
    """Markdown table rows: per run and sparsity the fine-tuned / retrained accuracy and the infer parity."""
    rows = ["| run | pruning | sparsity | fine-tuned acc. | retrained acc. (drop) | infer backend | "
            "agreement with PyTorch | accuracy libet / PyTorch | parity |",
            "|---|---|---|---|---|---|---|---|---|"]
    for run, summary, info in runs:
        ft = summary.get("finetune", {}).get("accuracy")
        for key, branch in sorted(summary.get("sweep", {}).items(), key=lambda kv: float(kv[0])):
            rt, inf = branch.get("retrain", {}), branch.get("infer")
            drop = f" ({-100 * rt['accuracy_drop']:+.1f} pt)" if "accuracy_drop" in rt else ""
            cells = [f"[{run}]({link_root}/{run}/report.md)", info.get("prune_algorithm", "?"), _pct(float(key)),
                     f"{ft:.3f}" if ft is not None else "—",
                     f"{rt['accuracy']:.3f}{drop}" if "accuracy" in rt else "—"]
            if inf:
                cells += [str(inf.get("backend")), f"{inf.get('prediction_agreement', float('nan')):.4f}",
                          f"{inf.get('accuracy', float('nan')):.3f} / {inf.get('torch_accuracy', float('nan')):.3f}",
                          "PASS" if parity(inf)[0] else "FAIL"]
            else:
                cells += ["—"] * 4
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def pruned_heads(summary: dict) -> dict[float, int]:
    """Attention heads the engine dropped per sparsity of a run (its infer metrics), where recorded."""
    out = {}
    for key, branch in summary.get("sweep", {}).items():
        heads = (branch.get("infer") or {}).get("pruned_heads")
        if heads is not None:
            out[float(key)] = int(heads)
    return out


def bench_headline(run: str, bench_json: dict, link_root: str, heads: dict[float, int] | None = None) -> list[str]:
    """Sentences on the bench headline of one run (our dense engine vs the PyTorch systems, and each
    tile-pruned model against our dense engine, with its pruned heads from ``heads``), from its bench.json rows."""
    meta = bench_json.get("meta", {})
    headline = bench.headline_rows(bench_json.get("rows", []), bool(meta.get("gpu")))
    if headline is None:
        return []
    (model, batch, seq, kind), sel = headline
    ms = {(r["system"], r["sparsity"]): r["ms_median"] for r in sel}
    dense = ms.get(("et-cuda-packed", 0.0))
    if dense is None:
        return []
    seq_text = sel[0]["seq"] if kind == "dev" else seq
    refs = [(name, ms[(system, 0.0)]) for system, name in
            (("hf-compile-max-autotune", "torch.compile max-autotune"), ("hf-sdpa", "HF SDPA"), ("hf-eager", "HF eager"))
            if (system, 0.0) in ms]
    text = (f"Bench headline ([{run}]({link_root}/{run}/report.md#benchmark), {meta.get('device', 'GPU')}, "
            f"{model} model, batch {batch}" + (f" of dev-set lengths, longest {seq_text}" if kind == "dev"
                                               else f" x seq {seq_text}")
            + f"; median ms per forward): our dense padding-free engine **{dense:.3f} ms**")
    if refs:
        text += " vs " + ", ".join(f"{name} {t:.3f} ms ({t / dense:.2f}x)" for name, t in refs)
    lines = [text + "."]
    sparse = sorted((s, t) for (system, s), t in ms.items() if system == "et-cuda-packed" and s > 0)
    if sparse:
        slower = [s for s, t in sparse if t >= dense]
        heads = heads or {}
        lines.append("Tile-pruned models on the same engine: " + ", ".join(
            f"{_pct(s)} {t:.3f} ms ({dense / t:.2f}x of dense"
            + (f"; {heads[s]} heads pruned" if s in heads else "") + ")" for s, t in sparse) + ". "
            + ("**The pruned models are not faster than the dense one on the GPU yet**" if slower
               else "The pruned models are faster than the dense one")
            + " (the engine skips pruned heads and head dimensions; which GEMM runs the pruned tiles, and the"
            " tile-sparse kernel's measurements: [cuda_lib/NOTES.md](cuda_lib/NOTES.md)).")
    return lines


def readme_block(docs_dir: Path, link_root: str) -> str:
    """The generated README block for every run under ``docs_dir`` (sorted by name)."""
    runs = []
    for folder in sorted(p for p in docs_dir.iterdir() if (p / "summary.json").is_file()):
        runs.append((folder.name, json.loads((folder / "summary.json").read_text()),
                     json.loads((folder / "source.json").read_text()) if (folder / "source.json").is_file() else {}))
    if not runs:
        raise RunImportError(f"{docs_dir}: no imported run (no */summary.json)")
    sources = ", ".join(f"[{run}]({link_root}/{run}/SOURCE.md) ({info.get('device') or 'device not recorded'}, "
                        f"{info.get('date_utc') or 'date not recorded'} UTC, commit "
                        f"{(info.get('git_commit') or '')[:10] or 'not recorded'})" for run, _, info in runs)
    lines = [BEGIN, f"Runs: {sources}.", ""] + accuracy_rows(runs, link_root) + [""]
    for run, summary, _ in runs:
        path = docs_dir / run / "bench" / "bench.json"
        if path.is_file():
            lines += bench_headline(run, json.loads(path.read_text()), link_root, pruned_heads(summary)) + [""]
    lines.append(END)
    return "\n".join(lines)


def replace_block(readme_text: str, block: str, readme: Path) -> str:
    """``readme_text`` with its marked block replaced by ``block``; RunImportError when the markers are
    missing or out of order."""
    start, end = readme_text.find(BEGIN), readme_text.find(END)
    if start < 0 or end < start:
        raise RunImportError(f"{readme}: needs one '{BEGIN}' line followed by one '{END}' line")
    return readme_text[:start] + block + readme_text[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tarballs", nargs="+", type=Path, help="run tarballs ($OUT/<run>.tgz of the device call)")
    p.add_argument("--docs-dir", type=Path, default=ROOT / "docs" / "gpu-run", help="where runs go (default: %(default)s)")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md",
                   help="README whose gpu-run block is regenerated (default: %(default)s)")
    p.add_argument("--no-readme", action="store_true", help="leave the README alone")
    p.add_argument("--commit", help="git commit the run was made from, when its artifacts do not record one")
    p.add_argument("--command", default=DEVICE_COMMAND, help="device-side command (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        archives = [read_tarball(t) for t in args.tarballs]
        readme_text = None if args.no_readme else args.readme.read_text()
        if readme_text is not None:
            replace_block(readme_text, "", args.readme)  # check the markers before anything is written
        for archive in archives:
            folder = import_run(archive, args.docs_dir, args.commit, args.command)
            print(f"import_run: {archive.tarball} -> {folder}")
        if readme_text is not None:
            link_root = posixpath.relpath(args.docs_dir.resolve().as_posix(), args.readme.resolve().parent.as_posix())
            new = replace_block(readme_text, readme_block(args.docs_dir, link_root), args.readme)
            stage.write_text(args.readme, new)
            print(f"import_run: {args.readme} gpu-run block regenerated")
    except (RunImportError, OSError) as exc:
        print(f"import_run: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
