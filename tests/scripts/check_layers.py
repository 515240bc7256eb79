#!/usr/bin/env python3
"""Checks that the Rust modules of `shared/` and `functions/` import one way only.

Every `.rs` file is a module (`provider/openai/mod.rs` is `provider::openai`). A module
depends on another when its non-test code names it: `use crate::…`, `use super::…`,
`crate::a::b` paths in code, and paths through its own child modules (`openai::X` in
`provider/mod.rs`). A path is cut at the longest prefix that is a module, so
`crate::provider::openai::encode::OpenAiEncoder` depends on `provider::openai::encode`.
A module naming its own submodules (a facade re-exporting them or dispatching to
them) is not a dependency unless `--strict` is given; a submodule naming its parent is.

Prints every dependency cycle (strongly connected component of more than one module)
and exits 1 if there is one. `--count` prints only the number of modules caught in a
cycle and of `match` expressions on `ProviderKind` outside `shared/src/provider/`.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRATES = [ROOT / "shared" / "src"] + sorted((ROOT / "functions").glob("*/src"))

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_path(src: Path, file: Path) -> tuple:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return tuple(parts)


def strip_tests_and_comments(text: str) -> str:
    """The file without `#[cfg(test)]` items (up to their closing brace) and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    for match in re.finditer(r"#\[cfg\(test\)\]", text):
        if match.start() < i:
            continue
        out.append(text[i : match.start()])
        brace = text.find("{", match.end())
        semicolon = text.find(";", match.end())
        if brace == -1 or (semicolon != -1 and semicolon < brace):
            i = semicolon + 1
            continue
        depth, j = 0, brace
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1
    out.append(text[i:])
    return "".join(out)


def expand_use_tree(tree: str) -> list:
    """`a::{b, c::{d as x, e}}` → ['a::b', 'a::c::d@x', 'a::c::e']."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+", "@", tree))
    if "{" not in tree:
        return [tree]
    prefix, rest = tree.split("{", 1)
    inner = rest[: rest.rfind("}")]
    items, depth, start = [], 0, 0
    for k, c in enumerate(inner):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(inner[start:k])
            start = k + 1
    items.append(inner[start:])
    paths = []
    for item in items:
        if item:
            paths.extend(prefix + p for p in expand_use_tree(item))
    return paths


def crate_graph(src: Path, strict: bool) -> dict:
    files = sorted(src.rglob("*.rs"))
    modules = {module_path(src, f): f for f in files}
    graph = {m: set() for m in modules}

    def resolve(current: tuple, path: str):
        segments = path.split("::")
        if segments[0] == "crate":
            base, segments = (), segments[1:]
        elif segments[0] in ("super", "self"):
            base = current
            while segments and segments[0] in ("super", "self"):
                if segments[0] == "super":
                    base = base[:-1]
                segments = segments[1:]
        else:
            base = current  # a child module of the current one
        best = None
        for k in range(len(segments) + 1):
            candidate = base + tuple(segments[:k])
            if candidate in modules:
                best = candidate
        return best

    for module, file in modules.items():
        code = strip_tests_and_comments(file.read_text())
        local = set(re.findall(rf"\bmod\s+({IDENT})\s*;", code))
        aliases = {}
        paths = []
        for tree in re.findall(r"\buse\s+([^;]+);", code):
            for path in expand_use_tree(tree):
                path, _, alias = path.partition("@")
                paths.append(path)
                target = resolve(module, path)
                last = alias or path.split("::")[-1]
                if target is not None and target[-1:] == (path.split("::")[-1],):
                    aliases[last] = path
        paths += re.findall(rf"\b((?:crate|super)(?:::{IDENT})+)", code)
        for path in re.findall(rf"(?<![:\w])((?:{IDENT})(?:::{IDENT})+)", code):
            head, _, rest = path.partition("::")
            if head in aliases:
                paths.append(aliases[head] + "::" + rest)
            elif head in local:
                paths.append(path)
        for path in paths:
            if path.split("::")[0] not in {"crate", "super", "self"} | local:
                continue
            target = resolve(module, path)
            if target is None or target == module or target == ():
                continue
            if not strict and target[: len(module)] == module:
                continue  # a facade naming its own submodules
            graph[module].add(target)
    return graph


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def provider_kind_matches(inside_provider: bool = False) -> list:
    """`match` expressions whose arms name `ProviderKind::`, outside shared/src/provider/
    (or inside it)."""
    found = []
    for src in CRATES:
        for file in sorted(src.rglob("*.rs")):
            if ((ROOT / "shared" / "src" / "provider") in file.parents) != inside_provider:
                continue
            code = strip_tests_and_comments(file.read_text())
            for match in re.finditer(r"\bmatch\b[^{;]*\{", code):
                depth, j = 0, match.end() - 1
                while j < len(code):
                    depth += {"{": 1, "}": -1}.get(code[j], 0)
                    if depth == 0:
                        break
                    j += 1
                body = code[match.end() : j]
                if re.search(r"ProviderKind::\w+\s*(\|[^=]*)?=>", body) or re.search(
                    r"\bSelf::\w+\s*=>", body
                ) and file.name == "model.rs":
                    line = code[: match.start()].count("\n") + 1
                    found.append(f"{file.relative_to(ROOT)}: match near line {line}")
    return found


def name(module: tuple, crate: Path) -> str:
    return "::".join(module) or f"{crate.parent.name} (root)"


def main() -> int:
    all_cycles = []
    for src in CRATES:
        for component in cycles(crate_graph(src, "--strict" in sys.argv)):
            all_cycles.append([name(m, src) for m in component])
    matches = provider_kind_matches()
    if "--count" in sys.argv:
        print(f"import cycles: {len(all_cycles)} ({sum(map(len, all_cycles))} modules)")
        print(f"match on ProviderKind outside provider/: {len(matches)}")
        for found in matches:
            print(f"  {found}")
        inside = provider_kind_matches(inside_provider=True)
        print(f"match on ProviderKind inside provider/: {len(inside)}")
        for found in inside:
            print(f"  {found}")
        return 0
    for component in all_cycles:
        print("import cycle among: " + ", ".join(component))
    if all_cycles:
        print(f"{len(all_cycles)} import cycle(s)")
        return 1
    print(f"no import cycle in {len(CRATES)} crates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
