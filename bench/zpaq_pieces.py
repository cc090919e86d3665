"""The load-time critical path of an artifact's per-group ZPAQ sections: whole streams vs equal pieces.

ZPAQ decompresses at ~0.5 MB/s per core and `serialize._read_sections` decompresses every piece in one
thread pool, so with as many cores as pieces (16 on the H200 box) the evaluation's artifact load waits for
the longest piece. This repacks an artifact's stored tensors both ways (per-group ZPAQ, its level and
reordered roles as given; `whole_is_the_artifact` says whether that reproduces its bytes), checks that both
decode to the artifact's tensors bit for bit, and times every ZPAQ piece's decompression alone (serially, so
the numbers do not depend on this box's core count). `--write-pieces` keeps the repacked artifact.

    .venv/bin/python bench/zpaq_pieces.py .gpu/artifact/artifact.ptz --out bench/results/zpaq_pieces.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from provenance import commit  # noqa: E402  (bench/)

from lit_golf.export.config import PerGroupCompression  # noqa: E402
from lit_golf.export.schemes.registry import dequantize_tensors  # noqa: E402
from lit_golf.export.serialize import (  # noqa: E402
    decompress,
    pack,
    read_artifact,
    section_chunks,
    unpack,
    write_artifact,
)
from lit_golf.files import write_atomic  # noqa: E402
from lit_golf.tool_parser import run_tool, tool_parser  # noqa: E402

LAYOUT_KEYS = ("format_version", "compressor", "sections", "tensors")  # what `pack` writes itself


def repack(header: dict, stored: dict, per_group: PerGroupCompression) -> bytes:
    """The artifact's tensors and header metadata, packed again with `per_group`'s ZPAQ settings."""
    metadata = {key: value for key, value in header.items() if key not in LAYOUT_KEYS}
    return pack(metadata, stored, header["compressor"], 11, per_group.zpaq_level, tuple(per_group.reorder_roles),
                per_group.zpaq_chunk_bytes)[0]


def variant(blob: bytes, expected: dict, per_group: PerGroupCompression) -> dict:
    """Bytes, and the decompression seconds of each ZPAQ piece alone, of one packing (checked bit-exact)."""
    header, loaded = unpack(blob)
    restored = dequantize_tensors(loaded)
    wrong = [name for name, t in expected.items() if not torch.equal(restored[name], t)]
    if wrong:
        raise ValueError(f"repacked tensors differ from the artifact's, e.g. {wrong[0]}")
    seconds: dict[str, list[float]] = {}
    for section, piece, _ in section_chunks(blob, header):
        if section["compressor"] == "zpaq":
            started = time.perf_counter()
            decompress(piece, "zpaq")
            seconds.setdefault(section["name"], []).append(round(time.perf_counter() - started, 2))
    every = [s for per_section in seconds.values() for s in per_section]
    return {"zpaq_chunk_bytes": per_group.zpaq_chunk_bytes, "bytes": len(blob), "pieces": len(every),
            "longest_piece_s": max(every), "all_pieces_s": round(sum(every), 1), "piece_s": seconds}


def measure(args: argparse.Namespace) -> None:
    header, stored = read_artifact(args.artifact)
    expected = dequantize_tensors(stored)
    whole = PerGroupCompression(True, args.zpaq_level, args.reorder_roles, None)
    pieces = PerGroupCompression(True, args.zpaq_level, args.reorder_roles, args.chunk_bytes)
    blobs = {"whole": repack(header, stored, whole), "pieces": repack(header, stored, pieces)}
    report = {"artifact": str(args.artifact), "artifact_bytes": Path(args.artifact).stat().st_size,
              "commit": commit() or "unknown", "zpaq_level": args.zpaq_level, "reorder_roles": args.reorder_roles,
              "whole": variant(blobs["whole"], expected, whole), "pieces": variant(blobs["pieces"], expected, pieces)}
    report["extra_bytes"] = report["pieces"]["bytes"] - report["whole"]["bytes"]
    report["whole_is_the_artifact"] = blobs["whole"] == Path(args.artifact).read_bytes()
    if args.write_pieces:  # the same model in the current export's layout, for an evaluation to load
        write_artifact(args.write_pieces, blobs["pieces"])
        report["pieces_artifact"] = str(args.write_pieces)
    write_atomic(Path(args.out), json.dumps(report, indent=2) + "\n")
    for name in ("whole", "pieces"):
        v = report[name]
        print(f"{name}: {v['bytes']:,} B, {v['pieces']} ZPAQ pieces, longest {v['longest_piece_s']} s, "
              f"all {v['all_pieces_s']} s")


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("zpaq_pieces.py", __doc__.splitlines()[0], config_file=False)
    parser.add_argument("artifact", type=Path, help="an artifact.ptz written with per-group ZPAQ")
    parser.add_argument("--chunk-bytes", type=int, default=PerGroupCompression().zpaq_chunk_bytes,
                        help="the piece length limit to compare with whole sections")
    parser.add_argument("--zpaq-level", type=int, default=5)
    parser.add_argument("--reorder-roles", nargs="*", default=["tok_emb"], help="as the artifact was written")
    parser.add_argument("--out", default="bench/results/zpaq_pieces.json")
    parser.add_argument("--write-pieces", type=Path, default=None, help="also write the artifact repacked in pieces")
    return run_tool(parser, argv, measure)


if __name__ == "__main__":
    raise SystemExit(main())
