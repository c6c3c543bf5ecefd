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

/* the k-th largest of v[0..n) (k >= 1), NaN counted as -inf; tmp holds n floats */
static float kth_largest(const float *v, int n, int k, float *tmp) {
    for (int i = 0; i < n; i++) tmp[i] = v[i] != v[i] ? -INFINITY : v[i];
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) { /* quickselect, descending */
        float pivot = tmp[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (tmp[i] > pivot) i++;
            while (tmp[j] < pivot) j--;
            if (i <= j) { float t = tmp[i]; tmp[i] = tmp[j]; tmp[j] = t; i++; j--; }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return tmp[want];
}

/* logits: (2, V) rows cond, uncond. Returns the index drawn, or 0 when nothing can be drawn (the
   torch sampler's answer when every probability is zero). */
int fd_cfg_draw(const float *logits, int V, float scale, int cfg_k, float temperature, int top_k, double u) {
    const float *cond = logits, *unc = logits + V;
    float *m = malloc(sizeof(float) * 2 * (size_t)V);
    if (!m) return 0;
    float *tmp = m + V;
    int cfg = scale != 1.0f && cfg_k > 0 && cfg_k < V;
    float cut = -INFINITY;
    if (cfg) {
        for (int i = 0; i < V; i++) m[i] = unc[i] + scale * (cond[i] - unc[i]);
        cut = kth_largest(m, V, cfg_k, tmp);
    }
    float best = -INFINITY;
    int kept = 0;
    for (int i = 0; i < V; i++) {
        float c = cond[i];
        int keep = c == c && (!cfg || m[i] >= cut);
        m[i] = keep ? c : -INFINITY;
        if (m[i] > -INFINITY) kept++;
        if (m[i] > best) best = m[i];
    }
    if (kept == 0 || !isfinite(best)) { free(m); return 0; }
    float cut2 = top_k > 0 && top_k < kept ? kth_largest(m, V, top_k, tmp) : -INFINITY;
    double total = 0.0;
    for (int i = 0; i < V; i++) {
        double p = m[i] > -INFINITY && m[i] >= cut2 ? exp((double)(m[i] - best) / temperature) : 0.0;
        tmp[i] = (float)p;
        total += p;
    }
    double target = u * total, acc = 0.0;
    int last = 0;
    for (int i = 0; i < V; i++) {
        if (tmp[i] <= 0.0f) continue;
        acc += tmp[i];
        last = i;
        if (acc > target) break;
    }
    free(m);
    return last;
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
void fd_cfg_guided(const float *logits, int V, float scale, float *out) {
    const float *cond = logits, *unc = logits + V;
    int small = fabsf(scale) < 0.5f;
    float coeff = small ? scale : scale - 1.0f;
    for (int i = 0; i < V; i++) out[i] = fmaf(coeff, cond[i] - unc[i], small ? unc[i] : cond[i]);
}

int fd_cfg_greedy(const float *logits, int V, float scale, int cfg_k) {
    const float *cond = logits, *unc = logits + V;
    float *m = NULL;
    int cfg = scale != 1.0f;
    float cut = -INFINITY;
    if (cfg) {
        m = malloc(sizeof(float) * 2 * (size_t)V);
        if (!m) return -1;
        float *tmp = m + V;
        int nans = 0, n = 0;
        fd_cfg_guided(logits, V, scale, m);
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
    for (int i = 0; i < V; i++) {
        if (cfg && m[i] < cut) continue;  /* NaN guided is never below the cut: kept, as in torch */
        float c = cond[i];
        if (c != c) { best = i; break; }  /* a NaN wins argmax at its first index */
        if (best < 0 || c > top) { best = i; top = c; }
    }
    free(m);
    return best < 0 ? 0 : best;
}
