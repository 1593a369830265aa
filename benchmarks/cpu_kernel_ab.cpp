// A/B timing of builds of ribsr's CPU attention kernel (src/ribsr/kernels/cpu_attention.cpp), e.g. two commits.
//
// Loads each given shared library, and for every case calls each library's ribsr_attention_f32 in turn, --reps
// times after one untimed call (so the builds see the same machine state); prints per build and case the min (or,
// with --median, the median) time in ns per score and thread, and a checksum of the outputs. A case is WS:MODE:
// windows of WS x WS tokens covering a 128x128 map (16384 / WS^2 windows), 3 heads, head dim 16, MODE b (a bias
// (3, N, N)), f (factors of rank 24) or n (neither).
//
//   g++ -O3 -march=native -std=c++17 -shared -fPIC -pthread src/ribsr/kernels/cpu_attention.cpp -o /tmp/new.so
//   git show OLD:src/ribsr/kernels/cpu_attention.cpp > /tmp/old.cpp && g++ ... /tmp/old.cpp -o /tmp/old.so
//   g++ -O2 -std=c++17 benchmarks/cpu_kernel_ab.cpp -o /tmp/kernel_ab -ldl
//   /tmp/kernel_ab --threads 1 --reps 11 /tmp/old.so /tmp/new.so -- 8:b 16:b 32:b 64:n 64:b 64:f
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

typedef int (*Fn)(const float*, const int64_t*, const float*, const int64_t*, const float*, const int64_t*,
                  const float*, int64_t, int64_t, const float*, const float*, int64_t, int64_t, int64_t, float*,
                  const int64_t*, int64_t, int64_t, int64_t, int64_t, float, int);

struct Case {
    int ws = 0;
    char mode = 'n';
    int64_t n = 0, windows = 0, heads = 3, d = 16, r = 24;
    std::vector<float> q, k, v, o, bias, qf, kf;
};

int main(int argc, char** argv) {
    int threads = 1, reps = 11;
    bool median = false;
    std::vector<Fn> fns;
    std::vector<std::string> names;
    std::vector<Case> cases;
    std::mt19937 gen(0);
    std::normal_distribution<float> normal;
    auto fill = [&](std::vector<float>& x, size_t count, float std) {
        x.resize(count);
        for (auto& e : x) e = normal(gen) * std;
    };
    int a = 1;
    for (; a < argc && strcmp(argv[a], "--"); a++) {
        if (!strcmp(argv[a], "--threads") && a + 1 < argc) { threads = atoi(argv[++a]); continue; }
        if (!strcmp(argv[a], "--reps") && a + 1 < argc) { reps = atoi(argv[++a]); continue; }
        if (!strcmp(argv[a], "--median")) { median = true; continue; }
        void* lib = dlopen(argv[a], RTLD_NOW | RTLD_LOCAL);
        Fn fn = lib ? (Fn)dlsym(lib, "ribsr_attention_f32") : nullptr;
        if (!fn) { fprintf(stderr, "%s: %s\n", argv[a], lib ? "no ribsr_attention_f32" : dlerror()); return 2; }
        fns.push_back(fn);
        names.push_back(argv[a]);
    }
    for (a++; a < argc; a++) {
        Case c;
        const char* colon = strchr(argv[a], ':');
        c.ws = atoi(argv[a]);
        if (!colon || c.ws < 1 || 16384 % (c.ws * c.ws) || !strchr("bfn", colon[1])) {
            fprintf(stderr, "bad case %s (WS:b, WS:f or WS:n, WS^2 dividing 16384)\n", argv[a]);
            return 2;
        }
        c.mode = colon[1];
        c.n = (int64_t)c.ws * c.ws;
        c.windows = 16384 / c.n;
        const size_t size = c.windows * c.heads * c.n * c.d;
        fill(c.q, size, 1.0f); fill(c.k, size, 1.0f); fill(c.v, size, 1.0f);
        c.o.resize(size);
        if (c.mode == 'b') fill(c.bias, c.heads * c.n * c.n, 1.0f);
        if (c.mode == 'f') { fill(c.qf, c.heads * c.n * c.r, 0.2f); fill(c.kf, c.heads * c.n * c.r, 0.2f); }
        cases.push_back(std::move(c));
    }
    if (fns.empty() || cases.empty()) { fprintf(stderr, "usage: %s [--threads T] [--reps R] [--median] LIB... -- CASE...\n", argv[0]); return 2; }
    std::vector<std::vector<std::vector<double>>> times(fns.size(), std::vector<std::vector<double>>(cases.size()));
    std::vector<std::vector<double>> checksum(fns.size(), std::vector<double>(cases.size()));
    for (int it = 0; it <= reps; it++)
        for (size_t ci = 0; ci < cases.size(); ci++)
            for (size_t f = 0; f < fns.size(); f++) {
                Case& c = cases[ci];
                const int64_t strides[3] = {c.heads * c.n * c.d, c.n * c.d, c.d};
                const bool b = c.mode == 'b', fa = c.mode == 'f';
                const auto t0 = std::chrono::steady_clock::now();
                const int rc = fns[f](c.q.data(), strides, c.k.data(), strides, c.v.data(), strides,
                                      b ? c.bias.data() : nullptr, c.n * c.n, c.n, fa ? c.qf.data() : nullptr,
                                      fa ? c.kf.data() : nullptr, fa ? c.r : 0, c.n * c.r, c.r, c.o.data(), strides,
                                      c.windows, c.heads, c.n, c.d, 0.25f, threads);
                const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                if (rc) { fprintf(stderr, "%s returned %d\n", names[f].c_str(), rc); return 1; }
                if (it) times[f][ci].push_back(t);
                else { double s = 0; for (float e : c.o) s += e; checksum[f][ci] = s; }
            }
    printf("ns per score and thread, %s of %d calls, %d thread(s)\n%-24s", median ? "median" : "min", reps, threads, "build");
    for (auto& c : cases) printf("  %7d:%c", c.ws, c.mode);
    printf("\n");
    for (size_t f = 0; f < fns.size(); f++) {
        printf("%-24s", names[f].substr(names[f].rfind('/') + 1).c_str());
        for (size_t ci = 0; ci < cases.size(); ci++) {
            auto x = times[f][ci];
            std::sort(x.begin(), x.end());
            const Case& c = cases[ci];
            printf("  %9.3f", (median ? x[x.size() / 2] : x[0]) * 1e9 * threads / (double)(c.windows * c.heads * c.n * c.n));
        }
        printf("\n");
    }
    printf("%-24s", "checksum");
    for (size_t ci = 0; ci < cases.size(); ci++) printf("  %9.3f", checksum[0][ci]);
    printf("\n");
    for (size_t f = 1; f < fns.size(); f++)
        for (size_t ci = 0; ci < cases.size(); ci++)
            if (checksum[f][ci] != checksum[0][ci]) printf("note: %s's outputs differ from the first build's (case %zu)\n", names[f].c_str(), ci);
    return 0;
}
