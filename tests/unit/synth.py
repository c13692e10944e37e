"""SYNTHETIC lru_gen text for edge cases the captures do not contain (spaces in
paths, malformed input, chosen ages). Not a capture: it is printed with the
printf formats of lru_gen_seq_show() in mm/vmscan.c (Linux 6.12):

    "memcg %5hu %s\n", " node %5d\n", " %10lu %10u" then " %10lu%c" per type

Real kernel captures live in tests/fixtures/ and are what the parser is
proven on; this only fills gaps.
"""


def lru_gen_text(memcgs) -> str:
    """memcgs: [(memcg_id, path, [(node, [(seq, age_ms, anon, file), ...]), ...]), ...]"""
    out = []
    for memcg_id, path, nodes in memcgs:
        out.append("memcg %5d %s\n" % (memcg_id, path))
        for node, gens in nodes:
            out.append(" node %5d\n" % node)
            for seq, age_ms, anon, file in gens:
                out.append(" %10d %10d" % (seq, age_ms) + " %10d%c" % (anon, " ") + " %10d%c" % (file, " ") + "\n")
    return "".join(out)
