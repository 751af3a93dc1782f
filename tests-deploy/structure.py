"""Issue 11's size rules, checked from the code: no source file under crates/*/src over
MAX_FILE lines, and no function over MAX_FN lines without a comment above it saying why
(a doc or line comment with "long" or "lines" in it, above the attributes).

Usage: structure.py ROOT. Prints one line per broken rule and exits 1 on any."""
import glob
import os
import re
import sys

MAX_FILE = 600
MAX_FN = 80
FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")
WHY = re.compile(r"\b([Ll]ong|lines?)\b")


def comment_above(lines, i):
    """The comment lines above line i, skipping attributes (which may span lines)."""
    out, c = [], i - 1
    while c >= 0:
        t = lines[c].strip()
        if t.startswith("//") and not t.startswith("//!"):
            out.append(t)
        elif not (t.startswith("#[") or t.startswith(")") or t.endswith(",") or t.endswith("(")
                  or t.startswith('"') or t.endswith("]")):
            break
        c -= 1
    return out


def end_of(lines, start, indent):
    j = start
    while j < len(lines) and not lines[j].rstrip().endswith(("{", ";")):
        j += 1
    if j >= len(lines) or lines[j].rstrip().endswith(";"):
        return None
    k = j + 1
    while k < len(lines):
        line = lines[k]
        if line.startswith(" " * indent + "}") and len(line) - len(line.lstrip()) == indent:
            return k
        k += 1
    return None


def check(root):
    problems = []
    for path in sorted(glob.glob(os.path.join(root, "crates/*/src/**/*.rs"), recursive=True)):
        rel = os.path.relpath(path, root)
        lines = open(path, encoding="utf-8").read().split("\n")
        if len(lines) - 1 > MAX_FILE:
            problems.append(f"{rel}: {len(lines) - 1} lines (at most {MAX_FILE})")
        for i, line in enumerate(lines):
            m = FN.match(line)
            if not m:
                continue
            k = end_of(lines, i, len(m.group(1)))
            if k is None or k - i + 1 <= MAX_FN:
                continue
            if not any(WHY.search(c) for c in comment_above(lines, i)):
                problems.append(
                    f"{rel}:{i + 1}: fn {m.group(7)} is {k - i + 1} lines with no comment saying why"
                )
    return problems


if __name__ == "__main__":
    found = check(sys.argv[1])
    for p in found:
        print(p)
    print(f"checked: {len(found)} problem(s)")
    sys.exit(1 if found else 0)
