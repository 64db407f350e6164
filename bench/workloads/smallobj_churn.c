/*
 * smallobj_churn - single-threaded churn of many short-lived 8..256 byte
 * objects, shaped like a small symbolic-algebra program.
 *
 * Random expression trees (sums, products, negations, constants, named
 * variables) are built, differentiated with respect to "x", simplified
 * (which frees and rebuilds nodes), evaluated with wrap-around integer
 * arithmetic and thrown away.  A pool of live expressions is replaced at
 * random so that object lifetimes are mixed.  Constants are boxed in
 * separate 8-byte allocations; variable nodes carry their name inline, so
 * node sizes range from 40 to 256 bytes.
 *
 * usage: smallobj_churn [scale]
 */
#include "wl.h"

enum { OP_CONST, OP_VAR, OP_ADD, OP_MUL, OP_NEG };

typedef struct node {
    uint8_t op;
    uint8_t is_x;      /* VAR only: the variable is "x" */
    uint16_t nlen;     /* VAR only: length of name[] */
    uint32_t tag;      /* VAR only: pattern tag of name[] */
    struct node *l, *r;
    uint64_t *cval;    /* CONST only: boxed value (8-byte allocation) */
    char name[];       /* VAR only */
} node;

static wl_rng rng;
static uint64_t live_nodes;
static uint32_t next_tag = 1;

static node *mk_const(uint64_t v)
{
    node *n = wl_malloc(sizeof(node));
    n->op = OP_CONST;
    n->l = n->r = NULL;
    n->cval = wl_malloc(sizeof(uint64_t));
    *n->cval = v;
    live_nodes++;
    return n;
}

static node *mk_var_named(const char *name, size_t len, int is_x)
{
    node *n = wl_malloc(sizeof(node) + len);
    n->op = OP_VAR;
    n->is_x = (uint8_t)is_x;
    n->nlen = (uint16_t)len;
    n->tag = 0;
    n->l = n->r = NULL;
    n->cval = NULL;
    memcpy(n->name, name, len);
    live_nodes++;
    return n;
}

static node *mk_var_random(void)
{
    if (wl_chance(&rng, 1, 3)) return mk_var_named("x", 1, 1);
    /* name length skewed towards short names, at most 216 so node <= 256 B */
    size_t len = 1 + wl_below(&rng, 8);
    if (wl_chance(&rng, 1, 4)) len += wl_below(&rng, 40);
    if (wl_chance(&rng, 1, 16)) len += wl_below(&rng, 168);
    node *n = wl_malloc(sizeof(node) + len);
    n->op = OP_VAR;
    n->is_x = 0;
    n->nlen = (uint16_t)len;
    n->tag = next_tag++;
    n->l = n->r = NULL;
    n->cval = NULL;
    n->name[0] = 'v'; /* never equal to "x" */
    wl_fill(n->name + 1, len - 1, n->tag);
    live_nodes++;
    return n;
}

static node *mk_op(int op, node *l, node *r)
{
    node *n = wl_malloc(sizeof(node));
    n->op = (uint8_t)op;
    n->l = l;
    n->r = r;
    n->cval = NULL;
    live_nodes++;
    return n;
}

static void free_node(node *n)
{
    if (n->op == OP_CONST) {
        free(n->cval);
    } else if (n->op == OP_VAR && !n->is_x) {
        if (n->name[0] != 'v' || !wl_matches(n->name + 1, n->nlen - 1u, n->tag))
            wl_corrupt("var name", n, n->nlen, n->tag);
    } else if (n->op == OP_VAR) {
        if (n->nlen != 1 || n->name[0] != 'x') wl_corrupt("var x", n, n->nlen, 0);
    }
    live_nodes--;
    free(n);
}

static void free_tree(node *n)
{
    if (!n) return;
    free_tree(n->l);
    free_tree(n->r);
    free_node(n);
}

static node *copy_tree(const node *n)
{
    switch (n->op) {
    case OP_CONST: return mk_const(*n->cval);
    case OP_VAR: {
        node *c = mk_var_named(n->name, n->nlen, n->is_x);
        c->tag = n->tag;
        return c;
    }
    default: return mk_op(n->op, copy_tree(n->l), n->r ? copy_tree(n->r) : NULL);
    }
}

static node *random_tree(int depth)
{
    if (depth <= 0 || wl_chance(&rng, 1, 4)) {
        if (wl_chance(&rng, 1, 2)) return mk_const(wl_below(&rng, 10));
        return mk_var_random();
    }
    uint64_t k = wl_below(&rng, 10);
    if (k < 4) return mk_op(OP_ADD, random_tree(depth - 1), random_tree(depth - 1));
    if (k < 8) return mk_op(OP_MUL, random_tree(depth - 1), random_tree(depth - 1));
    return mk_op(OP_NEG, random_tree(depth - 1), NULL);
}

/* d/dx, builds a fresh tree */
static node *deriv(const node *n)
{
    switch (n->op) {
    case OP_CONST: return mk_const(0);
    case OP_VAR: return mk_const(n->is_x ? 1 : 0);
    case OP_ADD: return mk_op(OP_ADD, deriv(n->l), deriv(n->r));
    case OP_NEG: return mk_op(OP_NEG, deriv(n->l), NULL);
    default:
        return mk_op(OP_ADD, mk_op(OP_MUL, deriv(n->l), copy_tree(n->r)),
                     mk_op(OP_MUL, copy_tree(n->l), deriv(n->r)));
    }
}

static int is_const(const node *n, uint64_t v) { return n->op == OP_CONST && *n->cval == v; }

/* simplify, consuming the input tree */
static node *simplify(node *n)
{
    if (n->op == OP_CONST || n->op == OP_VAR) return n;
    n->l = simplify(n->l);
    if (n->r) n->r = simplify(n->r);
    node *l = n->l, *r = n->r;
    switch (n->op) {
    case OP_NEG:
        if (l->op == OP_CONST) {
            *l->cval = 0 - *l->cval;
            free_node(n);
            return l;
        }
        if (l->op == OP_NEG) {
            node *inner = l->l;
            free_node(l);
            free_node(n);
            return inner;
        }
        return n;
    case OP_ADD:
        if (l->op == OP_CONST && r->op == OP_CONST) {
            node *c = mk_const(*l->cval + *r->cval);
            free_node(l); free_node(r); free_node(n);
            return c;
        }
        if (is_const(l, 0)) { free_node(l); free_node(n); return r; }
        if (is_const(r, 0)) { free_node(r); free_node(n); return l; }
        return n;
    default: /* MUL */
        if (l->op == OP_CONST && r->op == OP_CONST) {
            node *c = mk_const(*l->cval * *r->cval);
            free_node(l); free_node(r); free_node(n);
            return c;
        }
        if (is_const(l, 0) || is_const(r, 0)) {
            free_tree(l); free_tree(r); free_node(n);
            return mk_const(0);
        }
        if (is_const(l, 1)) { free_node(l); free_node(n); return r; }
        if (is_const(r, 1)) { free_node(r); free_node(n); return l; }
        return n;
    }
}

static uint64_t var_value(const node *n, uint64_t x)
{
    if (n->is_x) return x;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n->nlen; i++) h = (h ^ (unsigned char)n->name[i]) * 1099511628211ULL;
    return h | 1;
}

static uint64_t eval(const node *n, uint64_t x)
{
    switch (n->op) {
    case OP_CONST: return *n->cval;
    case OP_VAR: return var_value(n, x);
    case OP_ADD: return eval(n->l, x) + eval(n->r, x);
    case OP_MUL: return eval(n->l, x) * eval(n->r, x);
    default: return 0 - eval(n->l, x);
    }
}

static uint64_t count(const node *n)
{
    if (!n) return 0;
    return 1 + count(n->l) + count(n->r);
}

#define POOL 4096

int main(int argc, char **argv)
{
    double scale = wl_scale(argc, argv);
    long iters = wl_scaled(140000, scale);
    node *pool[POOL] = {0};
    uint64_t sum = 0;
    wl_seed(&rng, 0x5eed, 1);

    for (long it = 0; it < iters; it++) {
        int depth = 3 + (int)wl_below(&rng, 4);
        node *e = random_tree(depth);
        node *d = simplify(deriv(e));
        uint64_t x = 3 + (uint64_t)it;
        sum = wl_acc(sum, eval(e, x));
        sum = wl_acc(sum, eval(d, x));
        sum = wl_acc(sum, count(d));
        /* second derivative of a copy, then drop it */
        node *c = copy_tree(d);
        node *dd = simplify(deriv(c));
        sum = wl_acc(sum, eval(dd, x + 1));
        free_tree(dd);
        free_tree(c);
        free_tree(d);
        /* keep some expressions alive for a while */
        size_t slot = wl_below(&rng, POOL);
        if (pool[slot]) {
            sum = wl_acc(sum, eval(pool[slot], x));
            free_tree(pool[slot]);
        }
        pool[slot] = e;
    }
    for (int i = 0; i < POOL; i++) {
        if (pool[i]) {
            sum = wl_acc(sum, count(pool[i]));
            free_tree(pool[i]);
        }
    }
    if (live_nodes != 0) wl_die(3, "node count mismatch: %llu left", (unsigned long long)live_nodes);
    wl_report("smallobj_churn", scale, sum);
    return 0;
}
