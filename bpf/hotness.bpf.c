// SPDX-License-Identifier: GPL-2.0
/*
 * mglrud's hotness counter, on the tracepoint vmscan:mm_vmscan_lru_gen_young of
 * mglrud's kernel patch (kernel-patch/, documented in
 * Documentation/admin-guide/mm/multigen_lru.rst, "Tracing accessed pages").
 *
 * and, preferably, on its range event vmscan:mm_vmscan_lru_gen_young_range
 * (one event per PTE table, per THP, or per look-around window, carrying the
 * count of young entries): the per-entry event fires once per young 4 KiB page
 * and a program on it multiplies the time of an aging pass (kernel-patch/
 * README.md, "Cost"); -DUSE_RANGE_EVENT picks the range event.
 *
 * MGLRU's aging walk finds (and clears) young page-table entries. This program
 * keeps only those of the processes and memcgs mglrud targets and adds them up
 * in the kernel, per (tgid, memcg, region, node, lru): nothing is sent to user
 * space per event. mglrud reads the maps once per cycle and computes deltas
 * itself; nothing here is ever reset.
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
 */

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
#define LRU_ANON 0
#define LRU_FILE 1

struct region_key {
	u64 region;	/* addr >> REGION_SHIFT */
	u32 tgid;	/* the mm's owner; 0 if it has none */
	u16 memcg_id;
	u8 node;
	u8 lru;		/* LRU_ANON or LRU_FILE */
};

struct region_val {
	u64 pages;	/* young entries found, in base pages (a PMD counts 512) */
	u64 events;	/* events that found it young: entries, or ranges with the range event */
	u64 last_ns;	/* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the latest one */
};

enum stat {
	STAT_EVENTS,	/* every event seen */
	STAT_MATCHED,	/* events of a target, counted in heat */
	STAT_DROPPED,	/* events of a target lost because heat was full */
	NR_STATS,
};

/*
 * Per-CPU: each CPU updates its own copy of a value, so concurrent aging walks
 * (kswapd, direct reclaim, mglrud's writes to lru_gen) never contend on a
 * counter. Only the first insertion of a key takes the bucket lock.
 */
BPF_PERCPU_HASH(heat, struct region_key, struct region_val, MAX_REGIONS);
BPF_PERCPU_ARRAY(stats, u64, NR_STATS);
/* Filled by user space each cycle from the resolved targets; values unused. */
BPF_HASH(target_tgids, u32, u8, MAX_TGIDS);
BPF_HASH(target_memcgs, u32, u8, MAX_MEMCGS);

static __always_inline void stat_inc(int i)
{
	u64 *n = stats.lookup(&i);

	if (n)
		(*n)++;
}

/* Add @pages found young to the cell @key; false when the map is full. */
static __always_inline bool count(struct region_key *key, u64 pages, u64 now)
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
	v->events++;
	v->last_ns = now;
	return true;
}

static __always_inline bool targeted(u32 tgid, u32 memcg_id)
{
	return target_tgids.lookup(&tgid) || target_memcgs.lookup(&memcg_id);
}

#ifdef USE_RANGE_EVENT
#if REGION_SHIFT < 21
#error "the range event needs regions of at least 2 MiB (REGION_SHIFT >= 21)"
#endif
TRACEPOINT_PROBE(vmscan, mm_vmscan_lru_gen_young_range)
{
	struct region_key key = {};
	u64 now, file, anon;

	stat_inc(STAT_EVENTS);
	if (!args->nr_young || !targeted(args->tgid, args->memcg_id))
		return 0;

	key.region = args->addr >> REGION_SHIFT;
	key.tgid = args->tgid;
	key.memcg_id = args->memcg_id;
	key.node = args->nid;
	file = (u64)args->nr_file * args->nr_pages;
	anon = (u64)(args->nr_young - args->nr_file) * args->nr_pages;
	now = bpf_ktime_get_ns();
	if (anon) {
		key.lru = LRU_ANON;
		if (!count(&key, anon, now)) {
			stat_inc(STAT_DROPPED);
			return 0;
		}
	}
	if (file) {
		key.lru = LRU_FILE;
		if (!count(&key, file, now)) {
			stat_inc(STAT_DROPPED);
			return 0;
		}
	}
	stat_inc(STAT_MATCHED);
	return 0;
}
#else
TRACEPOINT_PROBE(vmscan, mm_vmscan_lru_gen_young)
{
	struct region_key key = {};

	stat_inc(STAT_EVENTS);
	if (!targeted(args->tgid, args->memcg_id))
		return 0;

	key.region = args->addr >> REGION_SHIFT;
	key.tgid = args->tgid;
	key.memcg_id = args->memcg_id;
	key.node = args->nid;
	key.lru = args->type ? LRU_FILE : LRU_ANON;
	if (!count(&key, args->nr_pages, bpf_ktime_get_ns())) {
		stat_inc(STAT_DROPPED);
		return 0;
	}
	stat_inc(STAT_MATCHED);
	return 0;
}
#endif
