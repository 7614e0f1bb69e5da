/* A command-line wrapper around llama.cpp's ggml-quants.c, used only to check
 * that tests/common/llama_ref.rs reproduces llama.cpp's reference quantizers.
 * Not built by cargo. Build it against a llama.cpp checkout:
 *
 *   G=path/to/llama.cpp/ggml
 *   cc -O2 -c $G/src/ggml-quants.c -I$G/include -I$G/src -o ggml-quants.o
 *   cc -O2 llama_ref_harness.c ggml-quants.o -lm -o llama-ref
 *   EDGEC_LLAMA_REF=$PWD/llama-ref cargo test -p edgec-passes --test vs_llama_reference \
 *       -- --ignored reference_port_matches_llama_cpp
 *
 * usage: llama-ref TYPE_ID N_PER_ROW IN.f32 OUT.bin [IMATRIX.f32]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The few ggml symbols ggml-quants.c needs. */
void ggml_abort(const char *file, int line, const char *fmt, ...) {
    fprintf(stderr, "ggml_abort at %s:%d\n", file, line);
    abort();
}
static int64_t block_size(int t) { return (t >= 10 && t <= 14) ? 256 : 32; }
static int64_t type_size(int t) {
    switch (t) {
    case 2: return 18;  case 3: return 20;  case 6: return 22;  case 7: return 24;
    case 8: return 34;  case 10: return 84; case 11: return 110; case 12: return 144;
    case 13: return 176; case 14: return 210; case 20: return 18;
    }
    return 0;
}
size_t ggml_row_size(int t, int64_t n) { return (size_t)(type_size(t) * n / block_size(t)); }
const char *ggml_type_name(int t) { (void)t; return "?"; }
size_t ggml_type_size(int t) { return (size_t)type_size(t); }

typedef size_t (*quantize_fn)(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q4_0(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q4_1(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q5_0(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q5_1(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q8_0(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q2_K(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q3_K(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q4_K(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q5_K(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q6_K(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_iq4_nl(const float *, void *, int64_t, int64_t, const float *);

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s TYPE_ID N_PER_ROW IN.f32 OUT.bin [IMATRIX.f32]\n", argv[0]);
        return 2;
    }
    int t = atoi(argv[1]);
    int64_t n = atoll(argv[2]);
    quantize_fn q = NULL;
    switch (t) {
    case 2: q = quantize_q4_0; break;   case 3: q = quantize_q4_1; break;
    case 6: q = quantize_q5_0; break;   case 7: q = quantize_q5_1; break;
    case 8: q = quantize_q8_0; break;   case 10: q = quantize_q2_K; break;
    case 11: q = quantize_q3_K; break;  case 12: q = quantize_q4_K; break;
    case 13: q = quantize_q5_K; break;  case 14: q = quantize_q6_K; break;
    case 20: q = quantize_iq4_nl; break;
    default: fprintf(stderr, "unsupported type %d\n", t); return 2;
    }
    FILE *f = fopen(argv[3], "rb");
    if (!f) return 1;
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *x = malloc(bytes);
    if (fread(x, 1, bytes, f) != (size_t)bytes) return 1;
    fclose(f);
    int64_t rows = bytes / 4 / n;
    float *imatrix = NULL;
    if (argc > 5) {
        imatrix = malloc(n * 4);
        FILE *g = fopen(argv[5], "rb");
        if (!g || fread(imatrix, 4, n, g) != (size_t)n) return 1;
        fclose(g);
    }
    size_t out_bytes = ggml_row_size(t, n) * rows;
    void *out = malloc(out_bytes);
    size_t written = q(x, out, rows, n, imatrix);
    FILE *o = fopen(argv[4], "wb");
    if (!o) return 1;
    fwrite(out, 1, written, o);
    fclose(o);
    return 0;
}
