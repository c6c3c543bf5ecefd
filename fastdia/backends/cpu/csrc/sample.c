/* One draw from a pair of CFG logits rows, for Dia2's depformer (fastdia.backends.cpu.kernels.cfg_draw).

   A 2B step samples 31 depformer codebooks. In torch each draw is ~20 small ops (lerp, two topk,
   softmax, scatter, multinomial over all 2048 entries); right after the stage's weights have
   streamed through the caches they cost ~400 us, ~10% of a quantized step. Here it is one call
   over two rows of floats.

   The distribution is the torch sampler's (fastdia.generation.dia2.sample over cfg_filter):
   the conditional row restricted to the cfg_k best entries of the guided row
   `uncond + scale * (cond - uncond)` (all at scale 1; ties at the cut stay in), then to its
   top_k best, softmax at `temperature`, drawn by inverse CDF in index order with the uniform `u`.
   Greedy decoding (temperature 0) does not come here. */
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
