/* One draw from a pair of CFG logits rows, for Dia2's depformer (fastdia.backends.cpu.kernels.cfg_draw).

   A 2B step samples 31 depformer codebooks. In torch each draw is ~20 small ops (lerp, two topk,
   softmax, scatter, multinomial over all 2048 entries); right after the stage's weights have
   streamed through the caches they cost ~400 us, ~10% of a quantized step. Here it is one call
   over two rows of floats.

   The distribution is the torch sampler's (fastdia.generation.dia2.sample over cfg_filter):
   the conditional row restricted to the cfg_k best entries of the guided row
   `uncond + scale * (cond - uncond)` (all at scale 1; ties at the cut stay in), then to its
   top_k best, softmax at `temperature`, drawn by inverse CDF in index order with the uniform `u`.
   Greedy decoding (temperature 0) is fd_cfg_greedy below. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* A lower bound of the k-th largest of v[0..n) (NaN counted as -inf), 1 <= k <= n: the values
   split into k lanes (index mod k), and the smallest lane maximum has at least k values at or
   above it. Written as elementwise maxima of k-wide rows, so the compiler vectorises it. lane
   holds k floats. */
static float kth_floor(const float *v, int n, int k, float *lane) {
    for (int j = 0; j < k; j++) lane[j] = -INFINITY;
    int full = n - n % k;
    for (int b = 0; b < full; b += k)
        for (int j = 0; j < k; j++) {
            float x = v[b + j] == v[b + j] ? v[b + j] : -INFINITY;
            lane[j] = x > lane[j] ? x : lane[j];
        }
    for (int j = 0; j < n - full; j++) {
        float x = v[full + j] == v[full + j] ? v[full + j] : -INFINITY;
        lane[j] = x > lane[j] ? x : lane[j];
    }
    float floor_v = INFINITY;
    for (int j = 0; j < k; j++) floor_v = lane[j] < floor_v ? lane[j] : floor_v;
    return floor_v;
}

/* the k-th largest of t[0..m) (k <= m), in place */
static float select_kth(float *t, int m, int k) {
    int lo = 0, hi = m - 1, want = k - 1;
    while (lo < hi) { /* quickselect, descending */
        float pivot = t[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (t[i] > pivot) i++;
            while (t[j] < pivot) j--;
            if (i <= j) { float x = t[i]; t[i] = t[j]; t[j] = x; i++; j--; }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return t[want];
}

/* the k-th largest of v[0..n) (k >= 1), NaN counted as -inf; tmp holds n floats (it may be v).
   Only the values at or above kth_floor (for 2048 logits and k = 50, ~150) go through the
   quickselect. */
static float kth_largest(const float *v, int n, int k, float *tmp) {
    if (k > n) k = n;
    float lane[k];
    float floor_v = kth_floor(v, n, k, lane);
    int m = 0;
    for (int i = 0; i < n; i++) { /* branch-free compaction (tmp may alias v: m <= i) */
        float x = v[i] != v[i] ? -INFINITY : v[i];
        tmp[m] = x;
        m += x >= floor_v;
    }
    return select_kth(tmp, m, k);
}

/* cond, uncond: V logits each; only ids below `limit` may be drawn (the guidance cut still ranks
   all V, as the torch path filters before it masks). Returns the index drawn, or 0 when nothing
   can be drawn (the torch sampler's answer when every probability is zero). */
static int draw_pair(const float *cond, const float *unc, int V, int limit, float scale, int cfg_k, float temperature,
                     int top_k, double u) {
    /* The ids that can be drawn, in id order, with their cond logits: with guidance, one pass
       keeps the ids whose guided logit reaches kth_floor (a superset of the cfg_k best, ~150 of
       2048), and the cut and everything after it work on those alone. The same arithmetic in the
       same order as over the whole row, so the same draw. */
    float *m = malloc(sizeof(float) * 4 * (size_t)V + sizeof(int) * (size_t)V);
    if (!m) return 0;
    float *tmp = m + V, *val = m + 2 * (size_t)V, *gd = m + 3 * (size_t)V;
    int *ids = (int *)(m + 4 * (size_t)V);
    int cfg = scale != 1.0f && cfg_k > 0 && cfg_k < V;
    int n = 0;
    if (cfg) {
        for (int i = 0; i < V; i++) m[i] = unc[i] + scale * (cond[i] - unc[i]);
        float lane[cfg_k];
        float floor_v = kth_floor(m, V, cfg_k, lane);
        int c = 0;
        for (int i = 0; i < V; i++) { /* branch-free compaction of the guided candidates */
            float x = m[i] != m[i] ? -INFINITY : m[i];
            ids[c] = i;
            gd[c] = m[i];
            tmp[c] = x;
            c += x >= floor_v;
        }
        for (int j = 0; j < c; j++) val[j] = tmp[j];
        float cut = select_kth(val, c, cfg_k);
        for (int j = 0; j < c; j++) { /* in id order: ids[] ascend */
            int i = ids[j];
            float cv = cond[i];
            int keep = cv == cv && cv > -INFINITY && gd[j] >= cut && i < limit;
            ids[n] = i;
            val[n] = cv;
            n += keep;
        }
    } else {
        for (int i = 0; i < limit; i++) {
            float cv = cond[i];
            int keep = cv == cv && cv > -INFINITY;
            ids[n] = i;
            val[n] = cv;
            n += keep;
        }
    }
    float best = -INFINITY;
    for (int j = 0; j < n; j++) best = val[j] > best ? val[j] : best;
    if (n == 0 || !isfinite(best)) { free(m); return 0; }
    float cut2 = top_k > 0 && top_k < n ? kth_largest(val, n, top_k, tmp) : -INFINITY;
    /* unnormalised probabilities, exp in float (vectorised: these exps were most of a pick) */
    float inv_t = 1.0f / temperature;
    #pragma omp simd
    for (int j = 0; j < n; j++) tmp[j] = val[j] >= cut2 ? expf((val[j] - best) * inv_t) : 0.0f;
    double total = 0.0;
    for (int j = 0; j < n; j++) total += tmp[j];
    double target = u * total, acc = 0.0;
    int last = 0;
    for (int j = 0; j < n; j++) {
        if (tmp[j] <= 0.0f) continue;
        acc += tmp[j];
        last = ids[j];
        if (acc > target) break;
    }
    free(m);
    return last;
}

/* logits: (2, V) rows cond, uncond. */
int fd_cfg_draw(const float *logits, int V, float scale, int cfg_k, float temperature, int top_k, double u) {
    return draw_pair(logits, logits + V, V, V, scale, cfg_k, temperature, top_k, u);
}

/* The greedy pick from a pair of CFG logits rows (cond, uncond), bit for bit what the torch path
   picks: argmax(cfg_filter(logits, scale, cfg_k)) (fastdia.generation.dia2). A greedy frame is
   only reproducible if every stage picks exactly torch's token, so each step follows torch:
   - guided = torch.lerp(uncond, cond, scale), which ATen's vectorised CPU kernel computes as one
     fused multiply-add: fma(scale - 1, cond - uncond, cond) for |scale| >= 0.5, else
     fma(scale, cond - uncond, uncond) (ATen/native/Lerp.h, lerp_vec);
   - the cut is the cfg_k-th largest guided value, NaN ordered above everything as in topk;
     entries with guided < cut are dropped (so ties at the cut stay in, and a NaN cut keeps all);
   - the answer is the first index of the largest kept cond value, or the first kept NaN
     (torch's argmax). At scale 1 nothing is filtered.
   Returns the index, or -1 out of memory. fd_cfg_guided writes the guided row alone (tests
   compare it with torch.lerp bit for bit). */
static void guided_row(const float *cond, const float *unc, int V, float scale, float *out) {
    int small = fabsf(scale) < 0.5f;
    float coeff = small ? scale : scale - 1.0f;
    for (int i = 0; i < V; i++) out[i] = fmaf(coeff, cond[i] - unc[i], small ? unc[i] : cond[i]);
}

void fd_cfg_guided(const float *logits, int V, float scale, float *out) {
    guided_row(logits, logits + V, V, scale, out);
}

/* Dia-1's guided logits for B rows of C channels: out = cond + scale[b] * (cond - uncond), from
   logits (B, 2, C, V), uncond then cond, as torch's three elementwise operations round it (each
   exact per element: the difference, the product and the sum are each rounded once, no fused
   multiply-add), in one pass instead of three with two temporaries. */
void fd_dia1_guided(const float *logits, int B, int C, int V, const float *scale, float *out) {
    int64_t plane = (int64_t)C * V;
    for (int b = 0; b < B; b++) {
        const float *unc = logits + 2 * b * plane, *cond = unc + plane;
        float *o = out + b * plane;
        vf s = vf_set1(scale[b]);
        int64_t i = 0;
        for (; i + 16 <= plane; i += 16) {
            vf c = vf_load(cond + i);
            vf_store(o + i, vf_add(c, vf_mul(s, vf_sub(c, vf_load(unc + i)))));
        }
        for (; i < plane; i++) o[i] = cond[i] + scale[b] * (cond[i] - unc[i]);
    }
}

static int greedy_pair(const float *cond, const float *unc, int V, int limit, float scale, int cfg_k) {
    float *m = NULL;
    int cfg = scale != 1.0f;
    float cut = -INFINITY;
    if (cfg) {
        m = malloc(sizeof(float) * 2 * (size_t)V);
        if (!m) return -1;
        float *tmp = m + V;
        int nans = 0, n = 0;
        guided_row(cond, unc, V, scale, m);
        for (int i = 0; i < V; i++) {
            if (m[i] != m[i]) nans++;
            else tmp[n++] = m[i];
        }
        int k = cfg_k < V ? cfg_k : V;
        if (k < 1) k = V;  /* no candidates asked for: configs refuse it; keep everything */
        if (k <= nans) cut = NAN;  /* the k-th largest is a NaN: `guided < NaN` drops nothing */
        else cut = kth_largest(tmp, n, k - nans, tmp);
    }
    int best = -1;
    float top = -INFINITY;
    for (int i = 0; i < limit; i++) {
        if (cfg && m[i] < cut) continue;  /* NaN guided is never below the cut: kept, as in torch */
        float c = cond[i];
        if (c != c) { best = i; break; }  /* a NaN wins argmax at its first index */
        if (best < 0 || c > top) { best = i; top = c; }
    }
    free(m);
    return best < 0 ? 0 : best;
}

int fd_cfg_greedy(const float *logits, int V, float scale, int cfg_k) {
    return greedy_pair(logits, logits + V, V, V, scale, cfg_k);
}

/* One pick per script from its pair of CFG rows, each script with its own settings, in one call:
   Dia2's action, codebook-0 and first depformer-stage choices for a whole batch (fastdia.backends
   .cpu.kernels.cfg_pick_rows). Script j's rows are rows first[j] (cond) and first[j] + 1 (uncond)
   of `logits` (row stride ld); ids from `limit` on are never picked; temperature[j] <= 0 is the
   greedy pick (fd_cfg_greedy's, torch's argmax bit for bit), else fd_cfg_draw's draw at u[j].
   Returns 0, or -1 when a greedy pick ran out of memory. */
int fd_cfg_pick_rows(const float *logits, int ld, int V, int limit, int n, const int64_t *first, const float *scale,
                     const int64_t *cfg_k, const float *temperature, const int64_t *top_k, const double *u,
                     int64_t *out) {
    int failed = 0;
    #pragma omp parallel for schedule(static) reduction(| : failed) if (n > 8)
    for (int j = 0; j < n; j++) {
        const float *cond = logits + first[j] * (int64_t)ld, *unc = cond + ld;
        int pick = temperature[j] > 0.0f
            ? draw_pair(cond, unc, V, limit, scale[j], (int)cfg_k[j], temperature[j], (int)top_k[j], u[j])
            : greedy_pair(cond, unc, V, limit, scale[j], (int)cfg_k[j]);
        if (pick < 0) failed = 1;
        out[j] = pick;
    }
    return failed ? -1 : 0;
}

/* The `width` ids of each row's largest values, largest first, equal values by the lower id: the
   total order of fastdia.nn.sampling.top_ids, computed from the same integer key (the float's
   order-preserving bits, then the id; keys are distinct), so the answer is that function's bit for
   bit. Dia-1 needs it for every (row, channel) of a step: at 64 members, 576 rows of 1028, where
   torch builds an int64 key per id and runs topk.

   Per row: the keys split into `width` runs; each run's largest key is a key, so the smallest of
   those `width` maxima has at least `width` keys at or above it and bounds the answer from below.
   One pass keeps the keys at or above it (for 1028 random logits and width 45, ~100), a
   quickselect finds the best `width` of them and a sort orders those. A key is
   order_bits(value) * span + (span - 1 - id): the float's bits made order-preserving as an
   integer, then the lower id first. */
static inline int32_t order_bits(int32_t b) { return b ^ ((b >> 31) & 0x7FFFFFFF); } /* a float's, as an int */

static int cmp_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void select_top(int64_t *k, int n, int want) { /* k[0..want) = the want largest, any order */
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int64_t pivot = k[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (k[i] > pivot) i++;
            while (k[j] < pivot) j--;
            if (i <= j) { int64_t t = k[i]; k[i] = k[j]; k[j] = t; i++; j--; }
        }
        if (want - 1 <= j) hi = j;
        else if (want - 1 >= i) lo = i;
        else break;
    }
}

int fd_top_ids(const float *x, int rows, int V, int width, int64_t *out) {
    int shift = 1;
    while ((1 << shift) < V) shift++;
    const int64_t span = (int64_t)1 << shift;
    if (width > V) width = V;
    int failed = 0;
    #pragma omp parallel for schedule(static) reduction(| : failed)
    for (int r = 0; r < rows; r++) {
        int64_t *k = malloc(sizeof(int64_t) * (size_t)V + sizeof(int32_t) * (size_t)V);
        if (!k) { failed = 1; continue; }
        int32_t *ob = (int32_t *)(k + V); /* each value's order-preserving bits: its key without the id */
        const int32_t *bits = (const int32_t *)(x + (size_t)r * V);
        for (int i = 0; i < V; i++) ob[i] = order_bits(bits[i]); /* vectorised */
        /* The smallest run maximum, on the bits alone: every key of a run's largest bits is at or
           above the run's largest key, so the keys kept below are a superset of those the whole
           keys would keep, and still hold `width` (one per run). In 32-bit lanes, not 64-bit keys. */
        int32_t floor_bits = INT32_MAX;
        for (int run = 0; run < width; run++) { /* runs [run*V/width, (run+1)*V/width), none empty */
            int a = (int)((int64_t)run * V / width), b = (int)((int64_t)(run + 1) * V / width);
            int32_t best = INT32_MIN;
            for (int i = a; i < b; i++) best = ob[i] > best ? ob[i] : best;
            if (best < floor_bits) floor_bits = best;
        }
        /* the ids at or above the floor, in order (ob is done with: the ids go over it), then
           their keys */
        int32_t *kept = ob;
        int n = 0;
#ifdef V_ISA_AVX512
        const __m512i fl = _mm512_set1_epi32(floor_bits), step = _mm512_set1_epi32(16);
        __m512i ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        int i = 0;
        for (; i + 16 <= V; i += 16, ids = _mm512_add_epi32(ids, step)) {
            __mmask16 m = _mm512_cmpge_epi32_mask(_mm512_loadu_si512((const void *)(ob + i)), fl);
            _mm512_mask_compressstoreu_epi32(kept + n, m, ids); /* n <= i: never past what is read */
            n += __builtin_popcount((unsigned)m);
        }
        for (; i < V; i++) { int32_t b = ob[i]; kept[n] = i; n += b >= floor_bits; }
#else
        for (int i = 0; i < V; i++) { int32_t b = ob[i]; kept[n] = i; n += b >= floor_bits; } /* branch-free: ~1 in 10 stays */
#endif
        for (int j = 0; j < n; j++) {
            int id = kept[j];
            k[j] = (int64_t)order_bits(bits[id]) * span + (span - 1 - id); /* the key */
        }
        select_top(k, n, width);
        if (width <= 64) {
            for (int j = 1; j < width; j++) { /* largest first: an insertion sort (qsort's calls cost more here) */
                int64_t v = k[j];
                int i = j - 1;
                while (i >= 0 && k[i] < v) { k[i + 1] = k[i]; i--; }
                k[i + 1] = v;
            }
        } else {
            qsort(k, (size_t)width, sizeof(int64_t), cmp_desc);
        }
        int64_t *o = out + (size_t)r * width;
        for (int j = 0; j < width; j++) o[j] = span - 1 - (k[j] & (span - 1));
        free(k);
    }
    return failed ? -1 : 0;
}

/* Dia-1's draw after the candidate search, for every (row, channel) of a step in one call:
   fastdia.nn.sampling.sample_rows from its candidates on (`order`, from fd_top_ids), the same
   operations in the same order on the <= width candidates of each row (fastdia.backends.cpu
   .kernels.sample_finish). Greedy picks and the counter-based uniforms are bit for bit the torch
   path's (comparisons and integer hashing only); a sampled pick can differ only where expf and
   torch's exp round differently and that moves a top_p cut or the draw (tests/test_rng.py).

   logits: (B, 2, C, V) float32 (uncond, cond); order: (B, C, W) candidate ids, best first. */
static uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

static double uniform_key(int64_t seed, int64_t step, int stream, int64_t index) {
    uint64_t s = (uint64_t)seed;
    uint32_t k = mix32((uint32_t)(s & 0xFFFFFFFFu));
    k = mix32(k ^ (uint32_t)((s >> 32) & 0xFFFFFFFFu));
    k = mix32(k ^ (uint32_t)((uint64_t)step & 0xFFFFFFFFu));
    k = mix32(k ^ (uint32_t)stream);
    uint32_t h = mix32(mix32(k ^ (uint32_t)((uint64_t)index & 0xFFFFFFFFu)) ^ 0x9E3779B9u);
    return ((double)h + 0.5) / 4294967296.0;
}

int fd_sample_finish(const float *logits, const int64_t *order, int B, int C, int V, int W, const int64_t *top_k,
                     const float *temperature, const float *top_p, const int64_t *seeds, const int64_t *steps,
                     int stream, int eos, int64_t *out) {
    #pragma omp parallel for schedule(static) if (B * C > 64)
    for (int rc = 0; rc < B * C; rc++) {
        int b = rc / C, c = rc % C;
        const float *cond = logits + ((size_t)(2 * b + 1) * C + c) * V;
        const int64_t *ids = order + (size_t)rc * W;
        float vals[W], w[W], sw[W], mass[W];
        int idx[W], drop[W];
        float top = -INFINITY;
        for (int j = 0; j < W; j++) {
            int64_t id = ids[j];
            int ok = j < top_k[b] && id <= eos && !(c > 0 && id == eos);
            vals[j] = ok ? cond[id] : -INFINITY;
            top = vals[j] > top ? vals[j] : top;
        }
        int64_t greedy = V;
        for (int j = 0; j < W; j++)
            if (vals[j] == top && ids[j] < greedy) greedy = ids[j];
        if (!(temperature[b] > 0.0f)) { out[rc] = greedy; continue; }
        float t = temperature[b];
        int eos_top = greedy == eos;
        float mx = -INFINITY;
        for (int j = 0; j < W; j++) {
            float x = vals[j] / t;
            if (eos_top && ids[j] < eos) x = -INFINITY;
            if (!eos_top && ids[j] == eos) x = -INFINITY;
            vals[j] = x;
            mx = x > mx ? x : mx;
        }
        for (int j = 0; j < W; j++) w[j] = expf(vals[j] - mx);
        /* top_p: weights sorted descending (stable), running mass (double accumulation, as
           torch's cumsum), a column dropped once the mass before it passes top_p of the total */
        for (int j = 0; j < W; j++) {
            int k = j;
            while (k > 0 && w[idx[k - 1]] < w[j]) { idx[k] = idx[k - 1]; k--; }
            idx[k] = j;
        }
        double acc = 0.0;
        for (int k = 0; k < W; k++) { sw[k] = w[idx[k]]; acc += sw[k]; mass[k] = (float)acc; }
        float limit = top_p[b] * mass[W - 1];
        for (int k = 0; k < W; k++) drop[idx[k]] = k > 0 && mass[k - 1] > limit;
        double cum = 0.0, total = 0.0;
        for (int j = 0; j < W; j++) total += drop[j] ? 0.0 : (double)w[j];
        double target = uniform_key(seeds[b], steps[b], stream, c) * total;
        int won = 0;
        for (int j = 0; j < W; j++) {
            cum += drop[j] ? 0.0 : (double)w[j];
            won += cum <= target;
        }
        if (won > W - 1) won = W - 1;
        out[rc] = ids[won];
    }
    return 0;
}
