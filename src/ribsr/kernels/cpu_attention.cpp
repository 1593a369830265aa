// Exact float32 window attention for the CPU: softmax(scale q.k + bias + q_f.k_f) v, one window and head at a time.
//
// Built on first use by ribsr/kernels/cpu_attention.py (the system's C++ compiler, -O3 -march=native) and called
// through ctypes; no Python or PyTorch headers, no OpenMP runtime (threads are std::threads, so the kernel does not
// bring a second OpenMP into a process whose PyTorch has its own).
//
// Why it exists: PyTorch's CPU flash-attention kernel adds an attention mask in a pass of its own over every block
// of scores (1.45x the time of no mask at window 64), and cannot take a v narrower than q and k (which the
// concatenated low-rank factors need). Here, for each block of 64 query rows of one (window, head):
//   1. k is packed transposed (D+R, N) and v row-major (N, D rounded up to a vector) once per (window, head) and
//      thread;
//   2. scores of ROWS (8 with AVX-512, 5 with AVX2, else 4) query rows at a time: one pass over the keys, NV
//      vectors of keys at a time (ROWS x NV accumulators), computing the dot products, adding the bias rows and
//      keeping the running maxima (the rows' scores stay in a per-thread buffer);
//   3. exp(score - max) in place, and the row sums;
//   4. the weighted sum of v rows, ROWS query rows per v row loaded, summed in blocks of 256 keys (so that the
//      rounding error grows with the block, not with N), divided by the row sum.
// Every softmax row is computed whole (no online rescaling): N floats per row fit the caches for the windows SR
// networks use (N = 9216 at window 96 is 36 KiB per row).
//
// Vectors are GCC/Clang vector extensions: 16 floats (AVX-512 registers) where the CPU has AVX-512, else 8 floats
// (AVX2 registers, or pairs of NEON ones); exp uses AVX-512's rounding and scaling instructions where it can.

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <atomic>
#include <new>
#include <thread>
#include <vector>

namespace {

// Vectors of 16 floats and 8 query rows at a time where the CPU has AVX-512 (32 vector registers); of 8 floats
// elsewhere (AVX2 and NEON-class machines: 16 registers of 32 bytes, or 32 of 16), so that the accumulators stay in
// registers (16-float vectors split into AVX2 halves ran 8x slower). NV: key vectors per step of the score pass.
// With AVX2, 5 rows and NV = 2: the 10 accumulators of either pass hide the FMA latency and each broadcast query
// value feeds 2 FMAs (one Zen 3 core, with ROW_PAD and the v sums in memory: 0.54-0.80x the time of 4 rows and
// NV = 1 at windows 8-64, docs/benchmarks.md). AVX-512 keeps 8 rows and NV = 1 and the rest 4 and 1, as measured
// before (NEON: unmeasured).
#if defined(__AVX512F__)
constexpr int L = 16;  // floats per vector
constexpr int ROWS = 8;  // query rows per pass over the keys
constexpr int NV = 1;
#elif defined(__AVX2__)
constexpr int L = 8;
constexpr int ROWS = 5;
constexpr int NV = 2;
#else
constexpr int L = 8;
constexpr int ROWS = 4;
constexpr int NV = 1;
#endif
constexpr int64_t BLOCK = 64;  // query rows per work item
constexpr int64_t KEY_BLOCK = 256;
constexpr int MAX_DK = 256;    // D + R
constexpr int CHANNEL_STEP = 8;  // q.k channels are summed this many at a time (D + R padded with zeros)
constexpr int MAX_HEAD_DIM = 64;
constexpr int MAX_DV_VECTORS = MAX_HEAD_DIM / L;
// Rows of k^T and of the scores are this many floats longer than npad: rows 4 KiB apart would share their L1 cache
// sets (measured 7-12% slower at windows 32 and 64 without it).
constexpr int64_t ROW_PAD = 16;

typedef float vf __attribute__((vector_size(L * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(L * sizeof(int32_t))));

// x in every lane. (vf{} + x would add 0 to x as a scalar first: -0 + 0 is +0, so it cannot be folded away;
// x - 0 is x for every x, so the subtraction is.)
inline vf splat(float x) { return x - vf{}; }
inline vf loadu(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
inline void storeu(float* p, vf v) { memcpy(p, &v, sizeof v); }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline float hmax(vf a) { float m = a[0]; for (int i = 1; i < L; i++) m = a[i] > m ? a[i] : m; return m; }
inline float hsum(vf a) { float s = 0.0f; for (int i = 0; i < L; i++) s += a[i]; return s; }

// exp(r) for |r| <= ln(2) / 2: Cephes' expf polynomial (about 1 ulp).
inline vf exp_reduced(vf r) {
    vf y = splat(1.9875691500e-4f);
    y = y * r + splat(1.3981999507e-3f);
    y = y * r + splat(8.3334519073e-3f);
    y = y * r + splat(4.1665795894e-2f);
    y = y * r + splat(1.6666665459e-1f);
    y = y * r + splat(5.0000001201e-1f);
    y = y * (r * r) + r + splat(1.0f);
    return y;
}

// exp(x) for x <= 0 (about 1 ulp); x below -87 gives about 1.6e-38; NaN stays NaN.
#if defined(__AVX512F__)
// With AVX-512: the rounding and the scaling by 2^n are single instructions (vrndscaleps, vscalefps).
inline vf vexp(vf x) {
    x = (vf)_mm512_max_ps((__m512)splat(-87.0f), (__m512)x);  // max(c, x) returns x where x is NaN
    const vf n = (vf)_mm512_roundscale_ps((__m512)(x * splat(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT |
                                                                                         _MM_FROUND_NO_EXC);
    const vf r = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);  // x - n ln 2, ln 2 in two parts
    return (vf)_mm512_scalef_ps((__m512)exp_reduced(r), (__m512)n);
}
#else
inline vf vexp(vf x) {
#if defined(__AVX2__)
    x = (vf)_mm256_max_ps((__m256)splat(-87.0f), (__m256)x);  // one instruction; max(c, x) returns x where x is NaN
#else
    x = x < splat(-87.0f) ? splat(-87.0f) : x;
#endif
    const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer, kept in the low bits
    const vf t = x * splat(1.44269504088896341f) + magic;
    const vf n = t - magic;  // round(x / ln 2)
    const vf r = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);  // x - n ln 2, ln 2 in two parts
    const vi two_n = ((vi)t - (vi)magic + 127) << 23;  // the bits of 2^n
    return exp_reduced(r) * (vf)two_n;
}
#endif

struct Problem {
    const float *q, *k, *v, *bias, *qf, *kf;
    float* o;
    int64_t sq[3], sk[3], sv[3], so[3];  // strides of (window, head, token); the channel stride is 1
    int64_t sbh, sbn;                    // bias strides of (head, query); the key stride is 1
    int64_t sfh, sfn;                    // factor strides of (head, token); the rank stride is 1
    int64_t windows, heads, n, d, r;
    float scale;
};

// Per-thread buffers for one (window, head): k^T and the factors k_f^T (DK, npad), v (npad, DVV * L) with zero
// padding, and the scores of ROWS query rows (ROWS, npad); npad: N rounded up to NV vectors; rows of kt and s are
// ks = npad + ROW_PAD floats apart.
struct Scratch {
    int64_t npad = 0, dk = 0, dvp = 0, ks = 0;
    float *kt = nullptr, *vp = nullptr, *s = nullptr;
    bool ok = false;
    Scratch(int64_t n, int64_t dk_, int64_t dv_vectors)
        : npad((n + L * NV - 1) / (L * NV) * (L * NV)), dk(dk_), dvp(dv_vectors * L), ks(npad + ROW_PAD) {
        kt = alloc(dk * ks);
        vp = alloc(npad * dvp);
        s = alloc(ROWS * ks);
        ok = kt && vp && s;
    }
    ~Scratch() { free(kt); free(vp); free(s); }
    static float* alloc(int64_t count) {
        size_t bytes = ((size_t)count * sizeof(float) + 63) / 64 * 64;
        return (float*)aligned_alloc(64, bytes);
    }
};

void pack(const Problem& p, int64_t w, int64_t h, Scratch& sc) {
    const int64_t n = p.n, d = p.d, npad = sc.npad, ks = sc.ks;
    const float* kb = p.k + w * p.sk[0] + h * p.sk[1];
    const float* vb = p.v + w * p.sv[0] + h * p.sv[1];
    for (int64_t j = 0; j < n; j++)
        for (int64_t c = 0; c < d; c++) sc.kt[c * ks + j] = kb[j * p.sk[2] + c];
    if (p.kf) {
        const float* fb = p.kf + h * p.sfh;
        for (int64_t j = 0; j < n; j++)
            for (int64_t c = 0; c < p.r; c++) sc.kt[(d + c) * ks + j] = fb[j * p.sfn + c];
    }
    for (int64_t c = 0; c < sc.dk; c++)  // keys past N, and channels past D + R: zeros
        for (int64_t j = (c < d + p.r ? n : 0); j < npad; j++) sc.kt[c * ks + j] = 0.0f;
    for (int64_t j = 0; j < npad; j++) {
        float* row = sc.vp + j * sc.dvp;
        for (int64_t c = 0; c < sc.dvp; c++) row[c] = (j < n && c < d) ? vb[j * p.sv[2] + c] : 0.0f;
    }
}

template <int DVV>
void rows(const Problem& p, int64_t w, int64_t h, int64_t i0, int64_t i1, Scratch& sc) {
    // Everything the loops read, as locals: the stores into the score buffer go through memcpy, which may alias
    // any memory, so fields of p and sc would be loaded again after every store.
    const int64_t n = p.n, d = p.d, r_ = p.r, dk = sc.dk, npad = sc.npad, ks = sc.ks, nfull = n / L * L;
    const int64_t sqn = p.sq[2], sbn = p.sbn, sfn = p.sfn, son = p.so[2];
    const float scale = p.scale;
    const float* const qb = p.q + w * p.sq[0] + h * p.sq[1];
    const float* const qfb = p.qf ? p.qf + h * p.sfh : nullptr;
    const float* const bb = p.bias ? p.bias + h * p.sbh : nullptr;
    float* const ob = p.o + w * p.so[0] + h * p.so[1];
    const float* const kt = sc.kt;
    const float* const vp = sc.vp;
    float* const s = sc.s;
    for (int64_t i = i0; i < i1; i += ROWS) {
        const int rr = (i1 - i) < ROWS ? (int)(i1 - i) : ROWS;
        // the query rows, channel-major: [scale q, q_f, zeros], zero rows past the block's end
        float qr[MAX_DK][ROWS];
        for (int r = 0; r < ROWS; r++) {
            for (int64_t c = 0; c < d; c++) qr[c][r] = r < rr ? qb[(i + r) * sqn + c] * scale : 0.0f;
            for (int64_t c = d; c < d + r_; c++) qr[c][r] = r < rr ? qfb[(i + r) * sfn + (c - d)] : 0.0f;
            for (int64_t c = d + r_; c < dk; c++) qr[c][r] = 0.0f;
        }
        // the bias rows (rows past the block's end read the last row's: added to scores never used)
        const float* brow[ROWS];
        for (int r = 0; r < ROWS; r++) brow[r] = bb ? bb + (i + (r < rr ? r : rr - 1)) * sbn : nullptr;
        vf mx[ROWS];
        for (int r = 0; r < ROWS; r++) mx[r] = splat(-INFINITY);
        // keys in steps of NV vectors of L; the vectors past the last full one (N not a multiple of L, or padding
        // up to NV vectors) go through memory below, so that every index into acc here is a constant and acc stays
        // in registers
        for (int64_t j = 0; j < npad; j += L * NV) {
            vf acc[ROWS][NV];
            for (int r = 0; r < ROWS; r++)
                for (int t = 0; t < NV; t++) acc[r][t] = splat(0.0f);
            for (int64_t c0 = 0; c0 < dk; c0 += CHANNEL_STEP) {  // dk: a multiple of CHANNEL_STEP (zero padded)
#pragma GCC unroll 8
                for (int c = 0; c < CHANNEL_STEP; c++) {
                    vf kv[NV];
                    for (int t = 0; t < NV; t++) kv[t] = loadu(kt + (c0 + c) * ks + j + t * L);
                    for (int r = 0; r < ROWS; r++) {
                        const vf qv = splat(qr[c0 + c][r]);
                        for (int t = 0; t < NV; t++) acc[r][t] += qv * kv[t];
                    }
                }
            }
            for (int t = 0; t < NV; t++) {
                const int64_t jt = j + t * L;
                if (bb && jt < nfull)
                    for (int r = 0; r < ROWS; r++) acc[r][t] += loadu(brow[r] + jt);
                for (int r = 0; r < ROWS; r++) storeu(s + r * ks + jt, acc[r][t]);
                if (jt < nfull)
                    for (int r = 0; r < ROWS; r++) mx[r] = vmax(mx[r], acc[r][t]);
            }
        }
        if (nfull < npad) {  // the vectors past nfull: their bias, -inf past N, then their share of the maximum
            for (int r = 0; r < ROWS; r++) {
                for (int64_t j = nfull; j < npad; j += L) {
                    float* tail = s + r * ks + j;
                    for (int jj = 0; jj < L; jj++) {
                        if (j + jj >= n) tail[jj] = -INFINITY;
                        else if (bb && r < rr) tail[jj] += bb[(i + r) * sbn + j + jj];
                    }
                    mx[r] = vmax(mx[r], loadu(tail));
                }
            }
        }
        float inv[ROWS];
        for (int r = 0; r < ROWS; r++) {
            float m = hmax(mx[r]);
            if (m == -INFINITY) m = 0.0f;  // a row of -inf biases (or a padding row): no NaN from -inf - -inf
            const vf mv = splat(m);
            vf sum = splat(0.0f);
            float* sr = s + r * ks;
            for (int64_t j = 0; j < npad; j += L) {
                const vf e = vexp(loadu(sr + j) - mv);
                sum += e;
                storeu(sr + j, e);
            }
            inv[r] = 1.0f / hsum(sum);
        }
        // The blocks' sums are added up in memory: acc and part together would not fit the registers (AVX2: 16),
        // and the compiler would spill inside the loop over keys; the empty asm statements (which may read acc)
        // keep it from moving acc into registers.
        alignas(64) float acc[ROWS][DVV * L];
        memset(acc, 0, sizeof acc);
        for (int64_t j0 = 0; j0 < n; j0 += KEY_BLOCK) {
            vf part[ROWS][DVV];
            for (int r = 0; r < ROWS; r++)
                for (int c = 0; c < DVV; c++) part[r][c] = splat(0.0f);
            const int64_t j1 = j0 + KEY_BLOCK < n ? j0 + KEY_BLOCK : n;
            for (int64_t j = j0; j < j1; j++) {
                const float* vj = vp + j * (DVV * L);
                for (int c = 0; c < DVV; c++) {
                    const vf vv = loadu(vj + c * L);
                    for (int r = 0; r < ROWS; r++) part[r][c] += splat(s[r * ks + j]) * vv;
                }
            }
            asm volatile("" : : "r"(&acc[0][0]) : "memory");
            for (int r = 0; r < ROWS; r++)
                for (int c = 0; c < DVV; c++) storeu(&acc[r][c * L], loadu(&acc[r][c * L]) + part[r][c]);
            asm volatile("" : : "r"(&acc[0][0]) : "memory");
        }
        for (int r = 0; r < rr; r++) {
            float out[DVV * L];
            for (int c = 0; c < DVV; c++) storeu(out + c * L, loadu(&acc[r][c * L]) * splat(inv[r]));
            float* orow = ob + (i + r) * son;
            for (int64_t c = 0; c < d; c++) orow[c] = out[c];
        }
    }
}

typedef void (*RowsFn)(const Problem&, int64_t, int64_t, int64_t, int64_t, Scratch&);
#if defined(__AVX512F__)
const RowsFn ROWS_FNS[MAX_DV_VECTORS] = {rows<1>, rows<2>, rows<3>, rows<4>};
#else
const RowsFn ROWS_FNS[MAX_DV_VECTORS] = {rows<1>, rows<2>, rows<3>, rows<4>, rows<5>, rows<6>, rows<7>, rows<8>};
#endif

// Work items (window, head, block of BLOCK query rows) in order; a thread takes a contiguous range and packs k and
// v again only when its (window, head) changes.
void work(const Problem& p, int64_t begin, int64_t end, std::atomic<int>* error) {
    const int64_t dvv = (p.d + L - 1) / L;
    Scratch sc(p.n, (p.d + p.r + CHANNEL_STEP - 1) / CHANNEL_STEP * CHANNEL_STEP, dvv);
    if (!sc.ok) { error->store(2); return; }
    const int64_t blocks = (p.n + BLOCK - 1) / BLOCK;
    int64_t packed = -1;
    for (int64_t item = begin; item < end; item++) {
        const int64_t wh = item / blocks, blk = item % blocks;
        const int64_t w = wh / p.heads, h = wh % p.heads;
        if (wh != packed) { pack(p, w, h, sc); packed = wh; }
        const int64_t i0 = blk * BLOCK, i1 = i0 + BLOCK < p.n ? i0 + BLOCK : p.n;
        ROWS_FNS[dvv - 1](p, w, h, i0, i1, sc);
    }
}

}  // namespace

extern "C" {

// The vector instructions this build uses: "avx512", "avx2" (with FMA), "neon" (AArch64) or "generic" (whatever the
// compiler makes of the vector extensions: measured slower than PyTorch's kernel on x86 without AVX).
const char* ribsr_vector_isa(void) {
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2";
#elif defined(__aarch64__) && defined(__ARM_NEON)
    return "neon";
#else
    return "generic";
#endif
}

// The limits callers check against: D <= ribsr_max_head_dim(), D + R <= ribsr_max_key_dim().
int ribsr_max_head_dim(void) { return MAX_HEAD_DIM; }
int ribsr_max_key_dim(void) { return MAX_DK; }

// o = softmax(scale q.k^T + bias + q_f.k_f^T) v per (window, head); returns 0, or 1 (bad sizes), 2 (out of memory).
// q, k, v, o: (windows, heads, n, d) with strides s*[0..2] and channel stride 1;
// bias: (heads, n, n) with strides (sbh, sbn, 1), or NULL; qf, kf: (heads, n, r) with strides (sfh, sfn, 1), or NULL.
int ribsr_attention_f32(const float* q, const int64_t* sq, const float* k, const int64_t* sk, const float* v,
                        const int64_t* sv, const float* bias, int64_t sbh, int64_t sbn, const float* qf,
                        const float* kf, int64_t r, int64_t sfh, int64_t sfn, float* o, const int64_t* so,
                        int64_t windows, int64_t heads, int64_t n, int64_t d, float scale, int threads) {
    if (windows < 0 || heads < 0 || n < 0 || d < 1 || d > MAX_HEAD_DIM || r < 0 || (r > 0 && (!qf || !kf)) ||
        d + r > MAX_DK || threads < 1)
        return 1;
    if (windows == 0 || heads == 0 || n == 0) return 0;
    Problem p{q, k, v, bias, r > 0 ? qf : nullptr, r > 0 ? kf : nullptr, o, {sq[0], sq[1], sq[2]},
              {sk[0], sk[1], sk[2]}, {sv[0], sv[1], sv[2]}, {so[0], so[1], so[2]}, sbh, sbn, sfh, sfn,
              windows, heads, n, d, r, scale};
    const int64_t items = windows * heads * ((n + BLOCK - 1) / BLOCK);
    const int64_t t = threads < items ? threads : items;
    std::atomic<int> error{0};
    std::vector<std::thread> pool;
    int64_t started = 1;  // ranges [1, started) run on their own threads, range 0 on this one
    try {
        pool.reserve(t - 1);
        for (int64_t i = 1; i < t; i++) {
            pool.emplace_back(work, std::cref(p), items * i / t, items * (i + 1) / t, &error);
            started = i + 1;
        }
    } catch (...) {  // no more threads (or no memory for them): this thread does the ranges left
    }
    work(p, 0, items / t, &error);
    for (int64_t i = started; i < t; i++) work(p, items * i / t, items * (i + 1) / t, &error);
    for (auto& th : pool) th.join();
    return error.load();
}

}  // extern "C"
