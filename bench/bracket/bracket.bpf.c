// SPDX-License-Identifier: GPL-2.0
/*
 * The bracket prototype (docs/stock-kernel.md, "A hook per walk instead of per entry"):
 * fentry and fexit on MGLRU's walk_pud_range() (mm/vmscan.c, 6.1: the p4d_entry callback of
 * its mm_walk_ops, called once per P4D of each mm walked) read the PTE tables under
 * [start, end of the P4D) through the direct map (page_offset_base + phys) before and after the
 * walk; an entry present and young before and present and old after is one harvested accessed bit.
 *
 * Built with clang + libbpf (bench/bracket/Makefile), CO-RE against the running kernel's BTF,
 * loaded by bench/bracket/libbpf_ctypes.py. bcc 0.26 cannot load it: the bpf_loop() callbacks
 * need BPF_PSEUDO_FUNC relocations, which libbpf does.
 *
 * -DATTRIB=1 adds the per-harvest attribution the real probe needs: tgid of mm->owner (once per
 * walk), node (pfn ranges in the `nodes` map, filled from userspace), anon/file (PG_swapbacked
 * of the page or its head, one struct page read; -DPAGE_READ=0 leaves it out), 2 MiB region;
 * harvests are added up in runs of one (tgid, region, node, lru) and go to the `heat` hash.
 * -DATTRIB=0 only counts. The `empty` program is an fexit on ptep_test_and_clear_young that
 * does nothing: the per-entry trampoline's cost, for comparison in the same run.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#ifndef ATTRIB
#define ATTRIB 0
#endif
#ifndef PAGE_READ
#define PAGE_READ 1
#endif

typedef __u64 u64;
typedef __u32 u32;
typedef __u16 u16;

char LICENSE[] SEC("license") = "GPL";

/* only the fields read; libbpf relocates their offsets from the kernel's BTF */
struct task_struct {
	int tgid;
} __attribute__((preserve_access_index));
struct mm_struct {
	struct task_struct *owner;
} __attribute__((preserve_access_index));
struct mm_walk {
	struct mm_struct *mm;
} __attribute__((preserve_access_index));
enum pageflags {
	PG_swapbacked = 0,
};

/* typeless ksyms: libbpf resolves their addresses from /proc/kallsyms */
extern const void page_offset_base __ksym;
extern const void vmemmap_base __ksym;

#define PTRS		512
#define X86_PRESENT	1ULL
#define X86_ACCESSED	(1ULL << 5)
#define X86_PSE		(1ULL << 7)
#define PFN_MASK	0x000ffffffffff000ULL
#define STRUCT_PAGE	64	/* sizeof(struct page) on x86-64 */
#define MAX_TABLES	16384
#define MAX_NODES	4	/* node pfn ranges: 8 is past the 512-byte stack of the callbacks with the page read */

enum {
	S_WALKS,	/* walk_pud_range() calls bracketed */
	S_TABLES,	/* PTE tables with a young entry recorded on entry */
	S_YOUNG,	/* young entries seen on entry */
	S_HARVESTED,	/* young on entry, old on exit */
	S_LOST,		/* tables not recorded (map full) */
	S_MATCHED,	/* harvests that reached `heat` */
	S_DBG_WORDS,	/* -DDEBUG: reap_word() calls with harvested bits */
	S_DBG_PAGES,	/* -DDEBUG: reap_page() calls past the bit test */
	S_DBG_FLUSH,	/* -DDEBUG: runs flushed */
	S_NR,
};

struct walkrec {
	u32 count;
	u32 tgid;
};
struct tkey {
	u64 task;
	u32 idx;
	u32 pad;
};
struct table_rec {
	u64 table;	/* the PTE table's direct-map address */
	u64 addr;	/* the user address of its entry 0 */
	u64 young[PTRS / 64];
};
struct ptes {
	u64 e[PTRS];
};
struct noderange {
	u64 start, end;	/* pfns [start, end) */
	u32 node;
	u32 pad;
};
struct hkey {
	u64 region;
	u32 tgid;
	u16 node;
	u16 lru;	/* 0 file, 1 anon, 2 unknown (PAGE_READ=0) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u64);
	__type(value, struct walkrec);
} walks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TABLES);
	__type(key, struct tkey);
	__type(value, struct table_rec);
} tables SEC(".maps");

/* slot 0: a PMD table, slot 1: a PTE table; a program does not run twice at once on a CPU */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, u32);
	__type(value, struct ptes);
} buf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, S_NR);
	__type(key, u32);
	__type(value, u64);
} stats SEC(".maps");

/* nodes[0].node holds the number of ranges that follow in nodes[1..] */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_NODES + 1);
	__type(key, u32);
	__type(value, struct noderange);
} nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct hkey);
	__type(value, u64);
} heat SEC(".maps");

static __always_inline void stat_add(u32 i, u64 n)
{
	u64 *v = bpf_map_lookup_elem(&stats, &i);

	if (v)
		__sync_fetch_and_add(v, n);
}

static __always_inline u64 popcount(u64 x)
{
	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (x * 0x0101010101010101ULL) >> 56;
}

/* ---- entry: record the young bitmap of every PTE table under [start, end of P4D) ---- */

struct scan {
	u64 pob;
	u64 task;
	u64 pud_va;
	u64 base;	/* user address of the P4D's start */
	u64 pud_addr;	/* user address of the PUD entry being read */
	u64 young;
	u32 first_pud, first_pmd, pmd_from;
	u32 count, lost, tables;
};

static int scan_pmd(u32 i, void *ctx)
{
	struct scan *s = ctx;
	struct table_rec t;
	struct tkey key = {};
	struct ptes *pmds, *ptes;
	u32 zero = 0, one = 1, idx = s->pmd_from + i;
	u64 pmd, any = 0, n = 0;
	int w, b;

	if (idx >= PTRS)
		return 1;
	barrier_var(idx);	/* keep the mask: the verifier does not carry the check above */
	idx &= PTRS - 1;
	pmds = bpf_map_lookup_elem(&buf, &zero);
	ptes = bpf_map_lookup_elem(&buf, &one);
	if (!pmds || !ptes)
		return 1;
	pmd = pmds->e[idx];
	if (!(pmd & X86_PRESENT) || (pmd & X86_PSE))	/* none, or a THP */
		return 0;
	t.table = s->pob + (pmd & PFN_MASK);
	if (bpf_probe_read_kernel(ptes, sizeof(*ptes), (void *)t.table))
		return 0;
	for (w = 0; w < PTRS / 64; w++) {
		u64 bits = 0;

		for (b = 0; b < 64; b++) {
			u64 e = ptes->e[w * 64 + b];

			bits |= ((e & (e >> 5)) & 1) << b;	/* present and accessed */
		}
		t.young[w] = bits;
		any |= bits;
	}
	if (!any)
		return 0;
	for (w = 0; w < PTRS / 64; w++)
		n += popcount(t.young[w]);
	s->young += n;
	t.addr = s->pud_addr + ((u64)idx << 21);
	key.task = s->task;
	key.idx = s->count;
	if (s->count >= MAX_TABLES || bpf_map_update_elem(&tables, &key, &t, BPF_ANY)) {
		s->lost++;
		return 0;
	}
	s->count++;
	return 0;
}

static int scan_pud(u32 i, void *ctx)
{
	struct scan *s = ctx;
	struct ptes *pmds;
	u32 zero = 0, idx = s->first_pud + i;
	u64 pud = 0;

	if (idx >= PTRS)
		return 1;
	bpf_probe_read_kernel(&pud, sizeof(pud), (void *)(s->pud_va + idx * 8));
	if (!(pud & X86_PRESENT) || (pud & X86_PSE))
		return 0;
	pmds = bpf_map_lookup_elem(&buf, &zero);
	if (!pmds || bpf_probe_read_kernel(pmds, sizeof(*pmds), (void *)(s->pob + (pud & PFN_MASK))))
		return 0;
	s->pud_addr = s->base + ((u64)idx << 30);
	s->pmd_from = idx == s->first_pud ? s->first_pmd : 0;
	bpf_loop(PTRS - s->pmd_from, scan_pmd, s, 0);
	return 0;
}

SEC("fentry/walk_pud_range")
int BPF_PROG(walk_entry, void *p4d, unsigned long start, unsigned long end, struct mm_walk *walk)
{
	struct scan s = {};
	struct walkrec w = {};
	struct mm_struct *mm = BPF_CORE_READ(walk, mm);
	u64 p4dv = 0;

	s.task = bpf_get_current_task();
	if (!mm)
		return 0;
	w.tgid = BPF_CORE_READ(mm, owner, tgid);
	bpf_probe_read_kernel(&p4dv, sizeof(p4dv), p4d);
	bpf_probe_read_kernel(&s.pob, sizeof(s.pob), &page_offset_base);
	if (p4dv & X86_PRESENT) {
		s.pud_va = s.pob + (p4dv & PFN_MASK);
		s.base = start & ~((1ULL << 39) - 1);
		s.first_pud = (start >> 30) & (PTRS - 1);
		s.first_pmd = (start >> 21) & (PTRS - 1);
		bpf_loop(PTRS - s.first_pud, scan_pud, &s, 0);
	}
	stat_add(S_WALKS, 1);
	stat_add(S_TABLES, s.count);
	stat_add(S_YOUNG, s.young);
	if (s.lost)
		stat_add(S_LOST, s.lost);
	w.count = s.count;
	bpf_map_update_elem(&walks, &s.task, &w, BPF_ANY);
	return 0;
}

/* ---- exit: young before, present and old now ---- */

struct reap {
	u64 task;
	u64 addr;	/* user address of the table's entry 0 */
	u64 harv[PTRS / 64];
	u64 harvested;
#if ATTRIB
	u64 vmemmap;
	u64 bits;	/* the word being read */
	u64 pending;	/* pages in the current run */
	u64 matched;
	struct hkey key;
	struct noderange nr[MAX_NODES];
	u64 bnd[MAX_NODES - 1];	/* ATTRIB=2: first pfn of node ranges 1.., 1 << 62 when absent */
	u32 nnodes;
	u32 word;
#endif
};

#if ATTRIB
static __always_inline void flush_run(struct reap *r)
{
	u64 *v;

	if (!r->pending)
		return;
#ifdef DEBUG
	stat_add(S_DBG_FLUSH, 1);
#endif
	v = bpf_map_lookup_elem(&heat, &r->key);
	if (v) {
		__sync_fetch_and_add(v, r->pending);
		r->matched += r->pending;
	} else if (!bpf_map_update_elem(&heat, &r->key, &r->pending, BPF_NOEXIST)) {
		r->matched += r->pending;
	}
	r->pending = 0;
}
#endif

#if ATTRIB == 1
static int reap_page(u32 b, void *ctx)
{
	struct reap *r = ctx;
	struct ptes *ptes;
	u32 one = 1, i, k;
	u64 e, pfn, region;
	u16 nd = 0, lru = 2;

	if (b >= 64 || !((r->bits >> b) & 1))
		return 0;
	ptes = bpf_map_lookup_elem(&buf, &one);
	if (!ptes)
		return 1;
	i = r->word * 64 + b;
	barrier_var(i);
	i &= PTRS - 1;
	e = ptes->e[i];
	pfn = (e & PFN_MASK) >> 12;
	for (k = 0; k < MAX_NODES; k++) {
		if (k >= r->nnodes)
			break;
		if (pfn >= r->nr[k].start && pfn < r->nr[k].end) {
			nd = r->nr[k].node;
			break;
		}
	}
#if PAGE_READ
	{
		unsigned long pg[2] = {};	/* page->flags, page->compound_head */
		u64 page = r->vmemmap + pfn * STRUCT_PAGE;
		unsigned long flags;

		bpf_probe_read_kernel(pg, sizeof(pg), (void *)page);
		flags = pg[0];
		if (pg[1] & 1)
			bpf_probe_read_kernel(&flags, sizeof(flags), (void *)(pg[1] - 1));
		lru = (flags >> bpf_core_enum_value(enum pageflags, PG_swapbacked)) & 1;
	}
#endif
	region = (r->addr + ((u64)i << 12)) >> 21;
	if (r->pending && (region != r->key.region || nd != r->key.node || lru != r->key.lru))
		flush_run(r);
	r->key.region = region;
	r->key.node = nd;
	r->key.lru = lru;
	r->pending++;
#ifdef DEBUG
	stat_add(S_DBG_PAGES, 1);
#endif
	return 0;
}

static int reap_word(u32 w, void *ctx)
{
	struct reap *r = ctx;

	if (w >= PTRS / 64)
		return 1;
	barrier_var(w);
	w &= PTRS / 64 - 1;
	r->bits = r->harv[w];
	if (!r->bits)
		return 0;
	r->word = w;
#ifdef DEBUG
	stat_add(S_DBG_WORDS, 1);
#endif
	bpf_loop(64, reap_page, r, 0);
	return 0;
}
#endif

#if ATTRIB == 2
static __always_inline void add_heat(struct reap *r, u64 region, u16 node, u64 n)
{
	if (!n)
		return;
	r->key.region = region;
	r->key.node = node;
	r->key.lru = 2;
	r->pending = n;
	flush_run(r);
}

/*
 * ATTRIB=2: attribution per table, no per-page callback and no struct page read. A PTE table
 * maps one aligned 2 MiB region, so the region is the table's; the node of each harvested
 * entry comes from its pfn against the node boundaries, branch-free (BPF has no setcc:
 * (pfn - b) >> 63 is 1 when pfn < b), summed in the same unrolled pass that finds the
 * harvested entries; anon/file is left to user space (lru 2). At most MAX_NODES heat updates
 * a table, one in a one-node guest.
 */
static __always_inline u64 harvest_nodes(struct reap *r, struct ptes *ptes, struct table_rec *t)
{
	u64 n = 0, ge1 = 0, ge2 = 0, ge3 = 0, b1 = r->bnd[0], b2 = r->bnd[1], b3 = r->bnd[2];
	int w, b;

	for (w = 0; w < PTRS / 64; w++) {
		u64 young = t->young[w];

		for (b = 0; b < 64; b++) {
			u64 e = ptes->e[w * 64 + b];
			u64 h = (young >> b) & e & ~(e >> 5) & 1;	/* young before, present and old now */
			u64 pfn = (e & PFN_MASK) >> 12;

			n += h;
			ge1 += h & (((pfn - b1) >> 63) ^ 1);
			ge2 += h & (((pfn - b2) >> 63) ^ 1);
			ge3 += h & (((pfn - b3) >> 63) ^ 1);
		}
	}
	if (n) {
		u64 region = t->addr >> 21;

		add_heat(r, region, r->nr[0].node, n - ge1);
		add_heat(r, region, r->nr[1].node, ge1 - ge2);
		add_heat(r, region, r->nr[2].node, ge2 - ge3);
		add_heat(r, region, r->nr[3].node, ge3);
	}
	return n;
}
#endif

static int reap_table(u32 i, void *ctx)
{
	struct reap *r = ctx;
	struct tkey key = { .task = r->task, .idx = i };
	struct table_rec *t = bpf_map_lookup_elem(&tables, &key);
	struct ptes *ptes;
	u32 one = 1;
	u64 any = 0, n = 0;
	int w, b;

	if (!t)
		return 0;
	ptes = bpf_map_lookup_elem(&buf, &one);
	if (!ptes || bpf_probe_read_kernel(ptes, sizeof(*ptes), (void *)t->table))
		goto out;
#if ATTRIB == 2
	r->harvested += harvest_nodes(r, ptes, t);
	goto out;
#endif
	for (w = 0; w < PTRS / 64; w++) {
		u64 old = 0;

		for (b = 0; b < 64; b++) {
			u64 e = ptes->e[w * 64 + b];

			old |= ((e & ~(e >> 5)) & 1) << b;	/* present and not accessed */
		}
		r->harv[w] = t->young[w] & old;
		any |= r->harv[w];
	}
	if (!any)
		goto out;
	for (w = 0; w < PTRS / 64; w++)
		n += popcount(r->harv[w]);
	r->harvested += n;
#if ATTRIB == 1
	r->addr = t->addr;
	bpf_loop(PTRS / 64, reap_word, r, 0);
#endif
out:
	bpf_map_delete_elem(&tables, &key);
	return 0;
}

SEC("fexit/walk_pud_range")
int BPF_PROG(walk_exit, void *p4d, unsigned long start, unsigned long end, struct mm_walk *walk)
{
	struct reap r = {};
	struct walkrec *wp, w;
	u64 task = bpf_get_current_task();

	wp = bpf_map_lookup_elem(&walks, &task);
	if (!wp)
		return 0;
	w = *wp;
	bpf_map_delete_elem(&walks, &task);
	if (!w.count)
		return 0;
	r.task = task;
#if ATTRIB
	{
		u32 k, zero = 0;
		struct noderange *hdr = bpf_map_lookup_elem(&nodes, &zero);

		r.nnodes = hdr ? hdr->node : 0;
		/*
		 * 6.1's verifier checks a bpf_loop() callback for one iteration from the caller's
		 * state (upstream 6.7 fixed that: "verify callbacks as if they are called unknown
		 * number of times"): a run length starting as the constant 0 had reap_page()'s
		 * "pending != 0" branch hard-wired away as dead code, and every run was one page.
		 * Start it from a map value (0, set by user space) the verifier cannot know.
		 */
		r.pending = hdr ? hdr->pad : 0;
		for (k = 0; k < MAX_NODES; k++) {
			u32 slot = k + 1;
			struct noderange *nr = bpf_map_lookup_elem(&nodes, &slot);

			if (nr)
				r.nr[k] = *nr;
		}
		for (k = 0; k < MAX_NODES - 1; k++)
			r.bnd[k] = k + 1 < r.nnodes ? r.nr[k + 1].start : 1ULL << 62;
		r.key.tgid = w.tgid;
		bpf_probe_read_kernel(&r.vmemmap, sizeof(r.vmemmap), &vmemmap_base);
	}
#endif
	bpf_loop(w.count, reap_table, &r, 0);
#if ATTRIB
	flush_run(&r);
	if (r.matched)
		stat_add(S_MATCHED, r.matched);
#endif
	if (r.harvested)
		stat_add(S_HARVESTED, r.harvested);
	return 0;
}

/* the per-entry trampoline's own cost, for comparison */
SEC("fexit/ptep_test_and_clear_young")
int BPF_PROG(empty, void *vma, unsigned long addr, void *ptep, int ret)
{
	return 0;
}
