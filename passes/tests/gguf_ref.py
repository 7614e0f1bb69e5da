#!/usr/bin/env python3
"""gguf-py (llama.cpp's Python package, gguf==0.19.0) as the reference for
edgec's ggml codec tests.

    gguf_ref.py --check     exit 0 if gguf 0.19.0 and numpy import
    gguf_ref.py JOBS.tsv    run the jobs, one per line:
        quant   TYPE  N  IN.f32  OUT.bin   rows of N little-endian f32 -> gguf.quants.quantize
        dequant TYPE  N  IN.bin  OUT.f32   rows of N elements of TYPE   -> gguf.quants.dequantize
TYPE is a GGMLQuantizationType name (Q4_0, Q4_K, IQ4_NL, F16, BF16 ...).
"""
import sys

REQUIRED = "0.19.0"


def main() -> int:
    import numpy as np
    from importlib.metadata import version
    from gguf import GGMLQuantizationType, quants
    from gguf.constants import GGML_QUANT_SIZES

    have = version("gguf")
    if have != REQUIRED:
        print(f"gguf {have} is installed; the tests need gguf=={REQUIRED}", file=sys.stderr)
        return 1
    if sys.argv[1:] == ["--check"]:
        return 0
    with open(sys.argv[1]) as f:
        for line in f:
            if not line.strip():
                continue
            op, name, n, src, dst = line.rstrip("\n").split("\t")
            qt = GGMLQuantizationType[name]
            n = int(n)
            block, type_size = GGML_QUANT_SIZES[qt]
            if op == "quant":
                x = np.fromfile(src, dtype="<f4").reshape(-1, n)
                q = quants.quantize(x, qt)
                np.ascontiguousarray(q).view(np.uint8).tofile(dst)
            elif op == "dequant":
                b = np.fromfile(src, dtype=np.uint8).reshape(-1, n // block * type_size)
                y = quants.dequantize(b, qt)
                np.ascontiguousarray(y, dtype="<f4").tofile(dst)
            else:
                raise SystemExit(f"unknown job {op!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
