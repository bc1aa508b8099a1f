#!/usr/bin/env bash
# The crate's module dependency graph, then every cycle in it; exits 1 if there is one.
#
# Nodes are top-level modules (`app`, `exec`, ...) and the submodules that have a file of their
# own (`exec/docker`, `watch/queue`, ...). An edge `a -> b` means a's code (outside its
# `#[cfg(test)] mod tests`) names b through `crate::b`, `super::`, or a child module's name.
# Doc comments and line comments do not count: a link in a doc is not a dependency.
#
# Usage: scripts/module-graph.sh [SRC_DIR]   (default: src next to this script)
set -euo pipefail
src="${1:-$(dirname "$0")/../src}"
exec python3 - "$src" <<'PY'
import os, re, sys

src = os.path.normpath(sys.argv[1])

def node_of(path):
    rel = os.path.relpath(path, src)[:-3]
    if rel.endswith("/mod"):
        rel = rel[:-4]
    return rel

nodes = {}
for root, _, files in os.walk(src):
    for f in files:
        if f.endswith(".rs") and not f.startswith("."):
            p = os.path.join(root, f)
            n = node_of(p)
            if n not in ("lib", "main"):
                nodes[n] = p
            if n == "lib":
                nodes["(lib)"] = p
names = set(n for n in nodes if n != "(lib)")

def resolve(segments):
    """The node a path names: the deepest module with a file of its own."""
    best = None
    for i in range(1, len(segments) + 1):
        cand = "/".join(segments[:i])
        if cand in names:
            best = cand
        else:
            break
    return best

def code_of(path):
    out = []
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r"\s*(pub(\(\w+\))?\s+)?mod tests", lines[i + 1]):
            break
        out.append(re.sub(r"//.*", "", line))
    return "\n".join(out)

def expand(prefix, body):
    """Paths of a use group: `a::{b, c::{d}}` -> [a::b, a::c::d]."""
    items, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    paths = []
    for it in items:
        it = it.strip()
        if not it:
            continue
        m = re.match(r"([\w:]*?)::\{(.*)\}$", it, re.S)
        if m:
            paths += expand(prefix + [s for s in m.group(1).split("::") if s], m.group(2))
        else:
            paths.append(prefix + [s for s in it.split(" as ")[0].split("::") if s])
    return paths

edges = {}
for node, path in nodes.items():
    if node == "(lib)":
        continue
    code = code_of(path)
    parts = node.split("/")
    parent = parts[:-1]
    children = [n.split("/")[-1] for n in names if n.startswith(node + "/") and n.count("/") == node.count("/") + 1]
    found = []
    for m in re.finditer(r"\b(crate|super)::\{([^;]*?)\}\s*;", code, re.S):
        base = [] if m.group(1) == "crate" else parent
        found += [base + p for p in expand([], m.group(2))]
    for m in re.finditer(r"\b(crate|super)::((?:\w+::)*\w+)", code):
        base = [] if m.group(1) == "crate" else parent
        found.append(base + m.group(2).split("::"))
    for c in children:
        if re.search(r"(?<![\w:])" + c + r"::", code):
            found.append(parts + [c])
    for segs in found:
        target = resolve(segs) if segs else None
        if target is None and not segs:
            continue
        if target is None:
            continue
        if target != node:
            edges.setdefault(node, set()).add(target)

for a in sorted(edges):
    for b in sorted(edges[a]):
        print(f"{a} -> {b}")

# Strongly connected components (Tarjan), then one cycle per component for the reader.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in sorted(edges.get(v, ())):
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in sorted(names):
    if v not in index:
        strong(v)

def cycles_in(comp):
    """Every elementary cycle inside one component, each once, starting at its least node."""
    found, members = [], set(comp)
    def walk(start, v, path):
        for w in sorted(edges.get(v, ())):
            if w == start:
                found.append(path + [start])
            elif w in members and w > start and w not in path:
                walk(start, w, path + [w])
    for s in comp:
        walk(s, s, [s])
    return found

print()
cycles = [c for comp in sccs for c in cycles_in(comp)]
if not cycles:
    print("no cycles")
    sys.exit(0)
print(f"{len(cycles)} cycle(s):")
for c in cycles:
    print("  " + " -> ".join(c))
sys.exit(1)
PY
