"""Copy the last ``make demo``'s closing lines into README's quick start: ``make readme``.

The quick start shows what ``make demo`` prints at its end; ``pneumodet demo`` writes those lines to
``demo/demo_output.txt`` and this puts them, unchanged, in the fenced block that follows "At the end it prints
where each result is:". ``tests/test_readme.py`` checks that the block has the demo's format and that the prose
after it quotes its figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LEAD = "At the end it prints where each result is:\n\n```\n"


def sample_span(text: str) -> tuple[int, int]:
    """Return (start, end) of the sample block's body in README's text."""
    start = text.index(LEAD) + len(LEAD)
    return start, text.index("```", start)


def main(output: Path = ROOT / "demo" / "demo_output.txt") -> int:
    if not output.is_file():
        print(f"{output}: not found; run make demo first", file=sys.stderr)
        return 2
    text = README.read_text()
    start, end = sample_span(text)
    README.write_text(text[:start] + output.read_text() + text[end:])
    print(f"README.md: the quick start's sample is {output}; check the prose after it still quotes its figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
