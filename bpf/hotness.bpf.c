// SPDX-License-Identifier: GPL-2.0
/*
 * mglrud's hotness counter, on the tracepoint vmscan:mm_vmscan_lru_gen_young_range
 * of mglrud's kernel patch (kernel-patch/, documented in
 * Documentation/admin-guide/mm/multigen_lru.rst, "Tracing accessed bits"): one
 * event per PTE table, per THP, or per look-around window the walk looked at,
 * with the counts of entries scanned and found young; -DUSE_RANGE_EVENT picks it.
 * Without it, the program attaches to the series' debugging event
 * vmscan:mm_vmscan_lru_gen_young, one per young 4 KiB page, which multiplies
 * the time of an aging pass (kernel-patch/README.md, "Cost"): benchmarks only.
 *
 * MGLRU's aging walk finds (and clears) young page-table entries. This program
 * keeps only those of the processes and memcgs mglrud targets and adds them up
 * in the kernel, per (tgid, memcg, region, node, lru): nothing is sent to user
 * space per event. mglrud reads the maps once per cycle and computes deltas
 * itself; nothing here is ever reset.
 *
 * Without the patch (a distribution kernel: docs/stock-kernel.md), the same
 * fact is taken where the kernel clears the accessed bit: an fexit program
 * (-DMGLRUD_ATTACH_FEXIT; BTF trampolines) on ptep_test_and_clear_young() and
 * pmdp_test_and_clear_young(), out-of-line functions of arch/x86/mm/pgtable.c
 * that MGLRU's walk and look-around call for each young entry; or, where fexit
 * cannot attach, a kprobe + kretprobe pair on the same functions
 * (-DMGLRUD_ATTACH_KPROBE). A return of 1 is one harvested accessed bit at
 * `addr` of `vma->vm_mm`: the program resolves what the tracepoint carries
 * itself (owner tgid and memcg from mm->owner, node and anon/file from the
 * struct page of the entry's pfn) and counts into the same maps, same layout.
 * Under fexit, mglrud's own aging harvests are added up in runs and reach the
 * maps at the end of each write to lru_gen (fexit on lru_gen_seq_write(); aging_run).
 *
 * Whoever clears the bit, it is gone for the next one: each harvest is classed
 * by the current task (the harvester) -- mglrud's own aging writes (its tgid,
 * config[CONFIG_SELF_TGID], set by user space), reclaim (kswapd or a task in
 * direct/memcg reclaim: PF_KSWAPD or PF_MEMALLOC), or other (clear_refs,
 * page_idle, DAMON, ...) -- and counted per class in stats[STAT_HARVEST_*].
 * HEAT_HARVESTERS (a mask of 1 << HARVEST_*) says which classes count in
 * `heat`: all of them on the tracepoint (which only MGLRU fires), aging only on
 * the probe (docs/stock-kernel.md, "Which harvests are heat").
 *
 * Loaded by bcc from this file (mglrud/sources/bpf_hotness.py); the constants
 * below come from -D flags:
 *   REGION_SHIFT   log2 of the region size (21: 2 MiB); with the range event at
 *                  least 21, so that a range (within one PMD) is within one region
 *   USE_RANGE_EVENT attach to mm_vmscan_lru_gen_young_range instead
 *   MAX_REGIONS    entries of `heat`; when it is full new keys are counted in
 *                  stats[STAT_DROPPED] instead
 *   MAX_TGIDS      entries of `target_tgids`
 *   MAX_MEMCGS     entries of `target_memcgs`
 *   MGLRUD_ATTACH_FEXIT / MGLRUD_ATTACH_KPROBE  the probe instead of the tracepoint
 *   VMEMMAP_BASE   (the probe) address of the kernel variable vmemmap_base
 *                  (/proc/kallsyms): struct page of a pfn, for node and anon/file
 *   HEAT_HARVESTERS which harvester classes count in heat (see above)
 *   CLOCK_EVERY    (the probe) harvests counted per clock read (default 256; mm_cache)
 *   TASK_FLAGS_OFFSET offsetof(struct task_struct, flags), from the kernel's BTF;
 *                  without it linux/sched.h is included
 */

/*
 * The harvester is the current task's: its task_struct.flags. TASK_FLAGS_OFFSET,
 * the member's offset read by user space from the kernel's BTF (mglrud/btf.py),
 * spares the tracepoint program linux/sched.h: two thirds of bcc's compile of it
 * (153-170 s with it, 51 s without, in the TCG test guest at the same host load).
 */
#if defined(MGLRUD_ATTACH_FEXIT) || defined(MGLRUD_ATTACH_KPROBE)
#define MGLRUD_PROBE 1
#endif
#ifndef TASK_FLAGS_OFFSET
#include <linux/sched.h>
#endif
#ifdef TASK_FLAGS_OFFSET
#define TASK_FLAGS(task) ((void *)((char *)(task) + TASK_FLAGS_OFFSET))
#else
#define TASK_FLAGS(task) (&((struct task_struct *)(task))->flags)
#endif

/* @p + @off: a member of the struct at @p, at an offset from the kernel's BTF or a header */
#define MEMBER(p, off)		((void *)((char *)(p) + (off)))

#ifdef MGLRUD_PROBE
#ifdef MGLRUD_BTF
/*
 * The probe's struct members at their offsets from the kernel's BTF, passed by user
 * space (mglrud/sources/bpf_program.py probe_layout()): VMA_VM_MM, MM_OWNER,
 * TASK_TGID, TASK_CGROUPS, CSS_SET_SUBSYS, MEMCG_ID_ID (mem_cgroup.id.id),
 * MEMORY_CGRP_ID, PAGE_FLAGS, PAGE_COMPOUND_HEAD, PAGE_SIZEOF, PG_SWAPBACKED. Only
 * the node's place in page->flags (config arithmetic, not in BTF) comes from a
 * header, a small one, with linux/mmzone.h's NODES_PGSHIFT and NODES_MASK (the same
 * in 6.1 and 6.12) spelled out here: linux/mm_types.h, linux/memcontrol.h and
 * linux/page-flags.h made bcc's compile of the probe several times slower.
 */
#include <linux/page-flags-layout.h>
#ifdef MGLRUD_ATTACH_KPROBE
/*
 * struct pt_regs, the kprobe's context (its arguments and PT_REGS_RC()): without it
 * bcc cannot compile the kprobe + kretprobe pair (linux/sched.h brought it before
 * the members came from BTF; the fallback then failed to compile, and the source
 * stayed down, on every kernel that needed it).
 */
#include <asm/ptrace.h>
#endif
#define MGLRUD_NODES_PGOFF	((sizeof(unsigned long) * 8) - SECTIONS_WIDTH - NODES_WIDTH)
#define NODES_PGSHIFT		(MGLRUD_NODES_PGOFF * (NODES_WIDTH != 0))
#define NODES_MASK		((1UL << NODES_WIDTH) - 1)
#else
#include <linux/sched.h>
#include <linux/mm_types.h>
#include <linux/memcontrol.h>
#include <linux/page-flags.h>
#define VMA_VM_MM		offsetof(struct vm_area_struct, vm_mm)
#define MM_OWNER		offsetof(struct mm_struct, owner)
#define TASK_TGID		offsetof(struct task_struct, tgid)
#define TASK_CGROUPS		offsetof(struct task_struct, cgroups)
#define CSS_SET_SUBSYS		offsetof(struct css_set, subsys)
#define MEMCG_ID_ID		(offsetof(struct mem_cgroup, id) + offsetof(struct mem_cgroup_id, id))
#define MEMORY_CGRP_ID		memory_cgrp_id
#define PAGE_FLAGS		offsetof(struct page, flags)
#define PAGE_COMPOUND_HEAD	offsetof(struct page, compound_head)
#define PAGE_SIZEOF		sizeof(struct page)
#define PG_SWAPBACKED		PG_swapbacked
#endif
#endif

#ifndef REGION_SHIFT
#define REGION_SHIFT 21
#endif
#ifndef MAX_REGIONS
#define MAX_REGIONS 65536
#endif
#ifndef MAX_TGIDS
#define MAX_TGIDS 1024
#endif
#ifndef MAX_MEMCGS
#define MAX_MEMCGS 1024
#endif

/* The tracepoint's `type`: folio_is_file_lru() */
#define KEY_LRU_ANON 0
#define KEY_LRU_FILE 1

struct region_key {
	u64 region;	/* addr >> REGION_SHIFT */
	u32 tgid;	/* the mm's owner; 0 if it has none */
	u16 memcg_id;
	u8 node;
	u8 lru;		/* KEY_LRU_ANON or KEY_LRU_FILE */
};

struct region_val {
	u64 pages;	/* young entries found, in base pages (a PMD counts 512) */
	u64 events;	/* events that found it young: entries, or ranges with the range event */
	u64 last_ns;	/* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the latest one */
};

enum mglrud_stat {
	STAT_EVENTS,	/* every event seen (the probe: every harvested bit) */
	STAT_MATCHED,	/* events of a target, counted in heat */
	STAT_DROPPED,	/* events of a target lost because heat was full */
	/* base pages of targets found young, by harvester, whether counted in heat or not */
	STAT_HARVEST_AGING,
	STAT_HARVEST_RECLAIM,
	STAT_HARVEST_OTHER,
	MGLRUD_NR_STATS,
};

enum mglrud_harvester { HARVEST_AGING, HARVEST_RECLAIM, HARVEST_OTHER };

#ifndef HEAT_HARVESTERS
#ifdef MGLRUD_PROBE
#define HEAT_HARVESTERS (1 << HARVEST_AGING)
#define HEAT_AGING_ONLY 1	/* aging_run below */
#else
#define HEAT_HARVESTERS ((1 << HARVEST_AGING) | (1 << HARVEST_RECLAIM) | (1 << HARVEST_OTHER))
#endif
#endif

/* config[CONFIG_SELF_TGID]: mglrud's tgid, whose writes to lru_gen are the aging it asks for */
#define CONFIG_SELF_TGID 0
/*
 * config[CONFIG_TARGETS_GEN]: bumped by user space after each update of the target maps
 * (sources/bpf_program.py set_targets(), once a cycle): the probe's per-CPU mm cache
 * (mm_cache below) is valid for one generation only.
 */
#define CONFIG_TARGETS_GEN 1
#define NR_CONFIG 2

/*
 * Per-CPU: each CPU updates its own copy of a value, so concurrent aging walks
 * (kswapd, direct reclaim, mglrud's writes to lru_gen) never contend on a
 * counter. Only the first insertion of a key takes the bucket lock.
 */
BPF_PERCPU_HASH(heat, struct region_key, struct region_val, MAX_REGIONS);
BPF_PERCPU_ARRAY(stats, u64, MGLRUD_NR_STATS);
/* Filled by user space each cycle from the resolved targets; values unused. */
BPF_HASH(target_tgids, u32, u8, MAX_TGIDS);
BPF_HASH(target_memcgs, u32, u8, MAX_MEMCGS);
BPF_ARRAY(config, u32, NR_CONFIG);

static __always_inline void stat_inc(int i)
{
	u64 *n = stats.lookup(&i);

	if (n)
		(*n)++;
}

/* Add @pages found young to the cell @key; false when the map is full. */
static __always_inline bool count_n(struct region_key *key, u64 pages, u64 entries, u64 now)
{
	struct region_val *v, init = {};

	v = heat.lookup(key);
	if (!v) {
		/* BPF_NOEXIST: another CPU may have inserted the key meanwhile. */
		heat.insert(key, &init);
		v = heat.lookup(key);
		if (!v)
			return false;
	}
	v->pages += pages;
	v->events += entries;
	v->last_ns = now;
	return true;
}

static __always_inline bool count(struct region_key *key, u64 pages, u64 now)
{
	return count_n(key, pages, 1, now);
}

static __always_inline bool targeted(u32 tgid, u32 memcg_id)
{
	return target_tgids.lookup(&tgid) || target_memcgs.lookup(&memcg_id);
}

/*
 * A pointer or a u32 member of the struct at @p (mm->owner, task->tgid, ...), read with
 * bpf_probe_read_kernel(): what the tracepoints and the kprobe read, and the fexit
 * programs where the verifier cannot type the load (see read_ptr() below).
 */
static __always_inline void *kread_ptr(const void *p, unsigned long off)
{
	void *v = NULL;

	bpf_probe_read_kernel(&v, sizeof(v), MEMBER(p, off));
	return v;
}

static __always_inline u32 kread_u32(const void *p, unsigned long off)
{
	u32 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), MEMBER(p, off));
	return v;
}

static __always_inline void stat_add(int i, u64 n)
{
	u64 *v = stats.lookup(&i);

	if (v)
		*v += n;
}

/* Who is clearing the accessed bit: the current task. */
static __always_inline int harvester(void)
{
	int k = CONFIG_SELF_TGID;
	u32 *self = config.lookup(&k);
	void *task;
	unsigned int flags = 0;	/* task_struct.flags is an unsigned int */

	if (self && *self && (bpf_get_current_pid_tgid() >> 32) == *self)
		return HARVEST_AGING;
	task = (void *)bpf_get_current_task();
	bpf_probe_read_kernel(&flags, sizeof(flags), TASK_FLAGS(task));
	/* kswapd, and direct or memcg reclaim (try_to_free_pages, try_to_free_mem_cgroup_pages) */
	if (flags & (0x00020000 /* PF_KSWAPD */ | 0x00000800 /* PF_MEMALLOC */))
		return HARVEST_RECLAIM;
	return HARVEST_OTHER;
}

#ifdef MGLRUD_PROBE
#ifndef VMEMMAP_BASE
#error "the probe needs -DVMEMMAP_BASE=<address of vmemmap_base from /proc/kallsyms>"
#endif
/* x86-64 page-table entry bits (arch/x86/include/asm/pgtable_types.h) */
#define X86_PAGE_PRESENT	(1UL << 0)
#define X86_PAGE_PSE		(1UL << 7)
#define X86_PFN_MASK		0x000ffffffffff000UL	/* PTE_PFN_MASK with 52 physical bits */
#define X86_PMD_PFN_MASK	0x000fffffffe00000UL	/* and a 2 MiB aligned frame */

/*
 * Kernel memory the probe reads. With fexit the program's arguments are BTF-typed
 * pointers (the verifier knows vma is a struct vm_area_struct *, ptep a pte_t *), and
 * a load through one, or through a pointer member loaded from one, is a plain load
 * the verifier checks against the kernel's BTF and the JIT guards with an exception
 * table entry: no helper call. The kprobe's arguments are plain numbers (kept in a
 * map from entry to return), read with bpf_probe_read_kernel(). A read the BTF walk
 * cannot type (past the end of the member's struct, as mem_cgroup.id from its css,
 * or a struct page found by arithmetic) is always bpf_probe_read_kernel().
 */
static __always_inline void *read_ptr(void *p, unsigned long off)
{
#ifdef MGLRUD_ATTACH_FEXIT
	return *(void **)MEMBER(p, off);
#else
	return kread_ptr(p, off);
#endif
}

static __always_inline u32 read_u32(void *p, unsigned long off)
{
#ifdef MGLRUD_ATTACH_FEXIT
	return *(u32 *)MEMBER(p, off);
#else
	return kread_u32(p, off);
#endif
}

/*
 * What the probe resolves per mm, cached per CPU: an aging walk harvests a whole
 * PTE table, a whole VMA, of one mm in a row on one CPU, so all but its first
 * entry find the mm here and skip its css and memcg id and the two target
 * lookups. An entry is valid while the vma's mm, the mm's owner and the owner's
 * tgid are the cached ones (an mm and a task_struct freed and both reused by a new
 * process on this CPU keep their addresses, but the new owner has another tgid)
 * and config[CONFIG_TARGETS_GEN] has not moved (a new target set, once a cycle: a
 * task moved to another memcg is seen at the next cycle at the latest).
 *
 * It also holds the time the harvests are stamped with (region_val.last_ns), read
 * once per CLOCK_EVERY harvests counted, and anew for each mm and each generation:
 * bpf_ktime_get_ns() per entry was most of the program's cost in the TCG guest,
 * whose clocksource is the emulated HPET (the TSC is marked unstable there); on
 * hardware it is a TSC read. A stamp is then older than its harvest by
 * at most the time the walk took over CLOCK_EVERY entries of one mm in one aging
 * pass (the generation moves before each: mglrud sets the targets, then ages),
 * far below the aging interval that bounds what last_ns can tell anyway.
 */
#ifndef CLOCK_EVERY
#define CLOCK_EVERY 256
#endif
struct mm_cache {
	void *mm;
	void *owner;
	u64 map_base;	/* the value of vmemmap_base: set at boot, read once */
	u64 now;	/* bpf_ktime_get_ns() when last read */
	u32 gen;
	u32 stamped;	/* harvests counted with `now` */
	u32 tgid;
	u16 memcg_id;
	u8 targeted;
	u8 valid;
};
BPF_PERCPU_ARRAY(mm_cache, struct mm_cache, 1);

static __always_inline void resolve_mm(struct mm_cache *c, void *mm, void *owner, u32 gen)
{
	void *cgroups, *css;
	u32 tgid = 0;
	unsigned short memcg_id = 0;

	if (owner) {
		tgid = read_u32(owner, TASK_TGID);
		cgroups = read_ptr(owner, TASK_CGROUPS);
		css = cgroups ? read_ptr(cgroups, CSS_SET_SUBSYS + MEMORY_CGRP_ID * sizeof(void *)) : NULL;
		/* css is the first member of struct mem_cgroup; mem_cgroup_id() is memcg->id.id */
		if (css)
			bpf_probe_read_kernel(&memcg_id, sizeof(memcg_id), MEMBER(css, MEMCG_ID_ID));
	}
	if (!c->valid)
		bpf_probe_read_kernel(&c->map_base, sizeof(c->map_base), (void *)VMEMMAP_BASE);
	c->mm = mm;
	c->owner = owner;
	c->gen = gen;
	c->tgid = tgid;
	c->memcg_id = memcg_id;
	c->targeted = targeted(tgid, memcg_id);
	c->stamped = CLOCK_EVERY;	/* the clock is read at the first harvest counted */
	c->valid = 1;
}

/* @c made valid for @mm (see above); false when the config cannot be read */
static __always_inline bool mm_check(struct mm_cache *c, void *mm)
{
	void *owner;
	u32 *genp, gen;
	int k = CONFIG_TARGETS_GEN;

	/* mm->owner exists with CONFIG_MEMCG (mm_update_next_owner() keeps it on a live thread) */
	owner = read_ptr(mm, MM_OWNER);
	genp = config.lookup(&k);
	if (!genp)
		return false;
	gen = *genp;
	if (!c->valid || c->mm != mm || c->owner != owner || c->gen != gen ||
	    (owner && read_u32(owner, TASK_TGID) != c->tgid))
		resolve_mm(c, mm, owner, gen);
	return true;
}

/* The mm's cached owner, memcg and targeted-ness (this CPU's mm_cache); NULL if none. */
static __always_inline struct mm_cache *mm_resolved(void *mm)
{
	struct mm_cache *c;
	int zero = 0;

	if (!mm)
		return NULL;
	c = mm_cache.lookup(&zero);
	if (!c || !mm_check(c, mm))
		return NULL;
	return c;
}

/* The region key of a harvested entry @entry (@nr_pages base pages) at @addr of the mm in @c */
static __always_inline void harvest_key(struct region_key *key, struct mm_cache *c, unsigned long addr,
					u64 entry, u64 nr_pages)
{
	void *page;
	unsigned long pg[2] = {};	/* page->flags, and page->compound_head beside it */
	unsigned long flags;

	page = (void *)(c->map_base +
			((nr_pages > 1 ? entry & X86_PMD_PFN_MASK : entry & X86_PFN_MASK) >> 12) * PAGE_SIZEOF);
	/* flags and compound_head are the first two words of struct page (6.1, 6.12): one read */
	if (PAGE_COMPOUND_HEAD == PAGE_FLAGS + sizeof(long)) {
		bpf_probe_read_kernel(pg, sizeof(pg), MEMBER(page, PAGE_FLAGS));
	} else {
		bpf_probe_read_kernel(&pg[0], sizeof(pg[0]), MEMBER(page, PAGE_FLAGS));
		bpf_probe_read_kernel(&pg[1], sizeof(pg[1]), MEMBER(page, PAGE_COMPOUND_HEAD));
	}
	flags = pg[0];
	key->node = (flags >> NODES_PGSHIFT) & NODES_MASK;
	/* folio_is_file_lru(): !PG_swapbacked, a flag of the head page */
	if (pg[1] & 1)
		bpf_probe_read_kernel(&flags, sizeof(flags), MEMBER(pg[1] - 1, PAGE_FLAGS));
	key->lru = (flags & (1UL << PG_SWAPBACKED)) ? KEY_LRU_ANON : KEY_LRU_FILE;
	key->region = addr >> REGION_SHIFT;
	key->tgid = c->tgid;
	key->memcg_id = c->memcg_id;
	if (c->stamped >= CLOCK_EVERY) {
		c->now = bpf_ktime_get_ns();
		c->stamped = 0;
	}
	c->stamped++;
}

#if defined(MGLRUD_ATTACH_FEXIT) && defined(HEAT_AGING_ONLY)
#define AGING_RUN 1
/*
 * mglrud's own aging, the only harvests counted in heat here (HEAT_HARVESTERS), is
 * one task writing lru_gen (config[CONFIG_SELF_TGID]), whose walk finds the young
 * entries of one mm in address order: runs of entries of one region, node and lru.
 * So its harvests are added up in one shared slot, `aging_run` (an array: its lookup
 * is inlined by the verifier, where a per-CPU array's and the heat hash's are helper
 * calls), and go into `heat` (and `stats`) when the key changes and when the write
 * returns (fexit on lru_gen_seq_write(), mm/vmscan.c, below): per young entry, one
 * read of its struct page and no map helper, where each was five helper calls
 * (stats three times, mm_cache, heat). One writer: mglrud's main thread, which ages
 * (aging_task()); it may change CPUs, so the slot is not per CPU. Harvests of that
 * thread outside a write of lru_gen (its own direct reclaim, its clear_refs writes)
 * are added at the end of its next write.
 */
struct aging_run {
	struct mm_cache c;	/* the aging task's mm cache */
	struct region_key key;	/* the run's key */
	u64 pages;	/* the run's base pages, not yet in heat */
	u64 entries;	/* and entries */
	u64 ns;	/* its stamp */
	u64 events;	/* STAT_EVENTS not yet in stats */
	u64 harvested;	/* STAT_HARVEST_AGING not yet in stats */
};
BPF_ARRAY(aging_run, struct aging_run, 1);

/*
 * mglrud's main thread (pid == tgid == config[CONFIG_SELF_TGID]), which does its aging
 * (mglrud/daemon.py's loop; the HTTP server is another thread): the slot's one writer.
 * Harvests by mglrud's other threads (their own direct reclaim) are aging harvests too
 * (harvester()) and are counted per harvest, as without the run.
 */
static __always_inline bool aging_task(void)
{
	int k = CONFIG_SELF_TGID;
	u32 *self = config.lookup(&k);
	u64 id = bpf_get_current_pid_tgid();

	return self && *self && (id >> 32) == *self && (u32)id == *self;
}

static __always_inline void run_flush(struct aging_run *r)
{
	if (!r->pages)
		return;
	if (count_n(&r->key, r->pages, r->entries, r->ns))
		stat_add(STAT_MATCHED, r->entries);
	else
		stat_add(STAT_DROPPED, r->entries);
	r->pages = 0;
	r->entries = 0;
}

static __always_inline bool same_key(struct region_key *a, struct region_key *b)
{
	/* region, then tgid, memcg_id, node and lru in the second word */
	return a->region == b->region && *(u64 *)((char *)a + 8) == *(u64 *)((char *)b + 8);
}

/* A harvest by mglrud's aging (see above) */
static __always_inline int harvest_aging(void *vma, unsigned long addr, u64 entry, u64 nr_pages)
{
	struct region_key key = {};
	struct aging_run *r;
	void *mm = read_ptr(vma, VMA_VM_MM);
	int zero = 0;

	r = aging_run.lookup(&zero);
	if (!r)
		return 0;
	r->events++;
	if (!mm || !mm_check(&r->c, mm) || !r->c.targeted)
		return 0;
	r->harvested += nr_pages;
	harvest_key(&key, &r->c, addr, entry, nr_pages);
	if (r->pages && !same_key(&r->key, &key))
		run_flush(r);
	if (!r->pages)
		r->key = key;
	r->pages += nr_pages;
	r->entries++;
	r->ns = r->c.now;
	return 0;
}
#endif

/*
 * One harvested accessed bit: entry @entry (its value after the clear: only the
 * accessed bit changed) at @addr of @vma, mapping @nr_pages base pages.
 */
static __always_inline int harvest(void *vma, unsigned long addr, u64 entry, u64 nr_pages)
{
	struct region_key key = {};
	struct mm_cache *c;
	int who;

#ifdef AGING_RUN
	if (aging_task())
		return harvest_aging(vma, addr, entry, nr_pages);
#endif
	stat_inc(STAT_EVENTS);
	c = mm_resolved(read_ptr(vma, VMA_VM_MM));
	if (!c || !c->targeted)
		return 0;
	who = harvester();
	stat_add(STAT_HARVEST_AGING + who, nr_pages);
	if (!((HEAT_HARVESTERS >> who) & 1))
		return 0;
	harvest_key(&key, c, addr, entry, nr_pages);
	if (!count(&key, nr_pages, c->now)) {
		stat_inc(STAT_DROPPED);
		return 0;
	}
	stat_inc(STAT_MATCHED);
	return 0;
}

/* @ptep, @pmdp: the pte_t / pmd_t (one u64 on x86-64) */
static __always_inline u64 read_entry(void *p)
{
#ifdef MGLRUD_ATTACH_FEXIT
	return *(u64 *)p;
#else
	u64 val = 0;

	bpf_probe_read_kernel(&val, sizeof(val), p);
	return val;
#endif
}

static __always_inline int harvest_pte(void *vma, unsigned long addr, void *ptep)
{
	u64 val = read_entry(ptep);

	if (!(val & X86_PAGE_PRESENT))
		return 0;
	return harvest(vma, addr, val, 1);
}

static __always_inline int harvest_pmd(void *vma, unsigned long addr, void *pmdp)
{
	u64 val = read_entry(pmdp);

	/*
	 * MGLRU also clears the accessed bit of non-leaf PMDs (walk_pmd_range_locked(),
	 * LRU_GEN_NONLEAF_YOUNG): that is no page, only a THP (_PAGE_PSE) is one.
	 */
	if (!(val & X86_PAGE_PRESENT) || !(val & X86_PAGE_PSE))
		return 0;
	return harvest(vma, addr & ~((1UL << 21) - 1), val, 512);
}

#ifdef MGLRUD_ATTACH_FEXIT
KRETFUNC_PROBE(ptep_test_and_clear_young, void *vma, unsigned long addr, void *ptep, int ret)
{
	if (ret != 1)
		return 0;
	return harvest_pte(vma, addr, ptep);
}

KRETFUNC_PROBE(pmdp_test_and_clear_young, void *vma, unsigned long addr, void *pmdp, int ret)
{
	if (ret != 1)
		return 0;
	return harvest_pmd(vma, addr, pmdp);
}

#ifdef AGING_RUN
/* The end of a write to lru_gen (mm/vmscan.c): mglrud's aging pass is in heat and stats after it */
KRETFUNC_PROBE(lru_gen_seq_write, void *file, const char *src, unsigned long len, void *pos, long ret)
{
	int zero = 0;
	struct aging_run *r;

	if (!aging_task())
		return 0;
	r = aging_run.lookup(&zero);
	if (!r)
		return 0;
	run_flush(r);
	if (r->events) {
		stat_add(STAT_EVENTS, r->events);
		r->events = 0;
	}
	if (r->harvested) {
		stat_add(STAT_HARVEST_AGING, r->harvested);
		r->harvested = 0;
	}
	return 0;
}
#endif
#else
/* kprobe + kretprobe: the arguments, kept from entry to return, per thread */
struct call {
	void *vma;
	unsigned long addr;
	void *entry;
};
BPF_HASH(calls_pte, u64, struct call, 4096);
BPF_HASH(calls_pmd, u64, struct call, 4096);

int kprobe__ptep_test_and_clear_young(struct pt_regs *ctx, void *vma, unsigned long addr, void *ptep)
{
	u64 id = bpf_get_current_pid_tgid();
	struct call c = { .vma = vma, .addr = addr, .entry = ptep };

	calls_pte.update(&id, &c);
	return 0;
}

int kretprobe__ptep_test_and_clear_young(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct call *c = calls_pte.lookup(&id);
	struct call copy;

	if (!c)
		return 0;
	copy = *c;
	calls_pte.delete(&id);
	if ((int)PT_REGS_RC(ctx) != 1)	/* an int: the upper half of rax is not its */
		return 0;
	return harvest_pte(copy.vma, copy.addr, copy.entry);
}

int kprobe__pmdp_test_and_clear_young(struct pt_regs *ctx, void *vma, unsigned long addr, void *pmdp)
{
	u64 id = bpf_get_current_pid_tgid();
	struct call c = { .vma = vma, .addr = addr, .entry = pmdp };

	calls_pmd.update(&id, &c);
	return 0;
}

int kretprobe__pmdp_test_and_clear_young(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct call *c = calls_pmd.lookup(&id);
	struct call copy;

	if (!c)
		return 0;
	copy = *c;
	calls_pmd.delete(&id);
	if ((int)PT_REGS_RC(ctx) != 1)	/* an int: the upper half of rax is not its */
		return 0;
	return harvest_pmd(copy.vma, copy.addr, copy.entry);
}
#endif
#else /* the tracepoints */
/*
 * The events carry the mm, not its owner (the trace header takes no lock): the tgid
 * is mm->owner's, read at the offsets user space passes from the kernel's BTF
 * (MM_OWNER, TASK_TGID: mglrud/sources/bpf_program.py layout()), with the probe's
 * kread_ptr()/kread_u32(); without them, from the headers. 0 if the mm has no owner
 * (any more).
 */
#ifndef MM_OWNER
#include <linux/sched.h>
#include <linux/mm_types.h>
#define MM_OWNER	offsetof(struct mm_struct, owner)
#define TASK_TGID	offsetof(struct task_struct, tgid)
#endif
static __always_inline u32 owner_tgid(const void *mm)
{
	void *owner;

	if (!mm)
		return 0;
	owner = kread_ptr(mm, MM_OWNER);
	return owner ? kread_u32(owner, TASK_TGID) : 0;
}

#ifdef USE_RANGE_EVENT
#if REGION_SHIFT < 21
#error "the range event needs regions of at least 2 MiB (REGION_SHIFT >= 21)"
#endif
/*
 * One event per range the walk looked at (a PTE table, a THP, a look-around window),
 * cold ones included (nr_scanned > 0, nr_young 0): only young entries count here.
 */
TRACEPOINT_PROBE(vmscan, mm_vmscan_lru_gen_young_range)
{
	struct region_key key = {};
	u64 now, file, anon;
	u32 tgid;
	int who;

	stat_inc(STAT_EVENTS);
	if (!args->nr_young)
		return 0;
	tgid = owner_tgid(args->mm);
	if (!targeted(tgid, args->memcg_id))
		return 0;
	who = harvester();
	stat_add(STAT_HARVEST_AGING + who, (u64)args->nr_young * args->nr_pages);
	if (!((HEAT_HARVESTERS >> who) & 1))
		return 0;

	key.region = args->addr >> REGION_SHIFT;
	key.tgid = tgid;
	key.memcg_id = args->memcg_id;
	key.node = args->nid;
	file = (u64)args->nr_file * args->nr_pages;
	anon = (u64)(args->nr_young - args->nr_file) * args->nr_pages;
	now = bpf_ktime_get_ns();
	if (anon) {
		key.lru = KEY_LRU_ANON;
		if (!count(&key, anon, now)) {
			stat_inc(STAT_DROPPED);
			return 0;
		}
	}
	if (file) {
		key.lru = KEY_LRU_FILE;
		if (!count(&key, file, now)) {
			stat_inc(STAT_DROPPED);
			return 0;
		}
	}
	stat_inc(STAT_MATCHED);
	return 0;
}
#else
/* The debugging event of the series' last patch: one per young entry (benchmarks) */
TRACEPOINT_PROBE(vmscan, mm_vmscan_lru_gen_young)
{
	struct region_key key = {};
	u32 tgid = owner_tgid(args->mm);
	int who;

	stat_inc(STAT_EVENTS);
	if (!targeted(tgid, args->memcg_id))
		return 0;
	who = harvester();
	stat_add(STAT_HARVEST_AGING + who, args->nr_pages);
	if (!((HEAT_HARVESTERS >> who) & 1))
		return 0;

	key.region = args->addr >> REGION_SHIFT;
	key.tgid = tgid;
	key.memcg_id = args->memcg_id;
	key.node = args->nid;
	key.lru = args->type ? KEY_LRU_FILE : KEY_LRU_ANON;
	if (!count(&key, args->nr_pages, bpf_ktime_get_ns())) {
		stat_inc(STAT_DROPPED);
		return 0;
	}
	stat_inc(STAT_MATCHED);
	return 0;
}
#endif
#endif /* the tracepoints */
