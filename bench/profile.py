"""Summarise a py-spy raw (collapsed) profile: `python -m bench.profile FILE [TOP]`.

Prints the functions with the most samples on top of the stack (self) and anywhere on it
(inclusive), as percentages of all samples (idle samples excluded by py-spy's --nonblocking
default of sampling active threads only when --idle is not given).
"""

from __future__ import annotations

import sys
from collections import Counter


def _name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    func, _, where = frame.partition(" (")
    return f"{func} ({where.rsplit('/', 1)[-1].split(':')[0]})" if where else func


def summarise(path: str, top: int = 25) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with open(path) as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = [_name(f) for f in stack.split(";")]
            total += n
            own[frames[-1]] += n
            for name in set(frames):
                inclusive[name] += n
    out = [f"{total} samples", "self:"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    out.append("inclusive:")
    out += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarise(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25))
