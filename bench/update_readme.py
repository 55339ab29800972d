"""Regenerate the README's speed table from ``python -m fastmax --json`` output.

    python -m fastmax --full --no-baselines --json docs/speed.json --plot docs/speed.png
    python bench/update_readme.py docs/speed.json "<the command above>"

The table goes between the ``<!-- speed-table -->`` markers, with the machine
and versions under it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from fastmax.__main__ import Row, format_table

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- speed-table:start -->", "<!-- speed-table:end -->"


def render(results: dict, command: str) -> str:
    rows = [Row(**r) for r in results["results"]]
    info = results["info"]
    return (
        f"{format_table(rows)}\n\n"
        f"*{command}* — {info['cpu']} ({info['cpu_count']} CPUs, {info['threads']} threads, "
        f"threading layer {info['threading_layer']}), {info['platform']}; Python {info['python']}, "
        f"NumPy {info['numpy']}, SciPy {info['scipy']}, Numba {info['numba']}, "
        f"PyTorch {info['torch'] or 'not installed'}, fastmax {info['fastmax']}."
    )


def main(argv: list[str]) -> int:
    path = Path(argv[1])
    command = argv[2] if len(argv) > 2 else "python -m fastmax --full"
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"{START}\n{render(json.loads(path.read_text()), command)}\n{END}"
    new, count = re.subn(
        re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S
    )
    if count != 1:
        raise SystemExit(f"README.md needs exactly one {START} ... {END} block")
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
